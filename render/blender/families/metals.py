"""Metal finishes: brushed, polished, oxidised, painted metal and car paint.

One recipe with variations: the finish's fine structure, read from object-space noise and
Voronoi cells, drives roughness, normal and, where the finish lays bare metal, the metallic
weight: brush streaks (stretched along one axis, with a matching anisotropy tangent),
scratches and smudges, oxide patches and pits, paint chips over bare metal, car paint's
flakes under the clear coat. Part of the family registry ``render.blender.families``; the
node helpers are in ``render.blender.nodes``.
"""

from __future__ import annotations

from render.blender.nodes import Graph, Socket


def _axis_tangent(g: Graph, axis: tuple[float, float, float]) -> Socket:
    """World-space tangent along an object-space axis, projected onto the surface."""
    world_axis = g.node(
        "ShaderNodeVectorTransform",
        vector_type="VECTOR",
        convert_from="OBJECT",
        convert_to="WORLD",
    )
    world_axis.inputs["Vector"].default_value = axis
    geom = g.node("ShaderNodeNewGeometry")
    normal = geom.outputs["Normal"]
    dot = g.node(
        "ShaderNodeVectorMath", {0: world_axis.outputs[0], 1: normal}, operation="DOT_PRODUCT"
    ).outputs["Value"]
    along = g.node("ShaderNodeVectorMath", {0: normal, "Scale": dot}, operation="SCALE")
    proj = g.node(
        "ShaderNodeVectorMath",
        {0: world_axis.outputs[0], 1: along.outputs[0]},
        operation="SUBTRACT",
    )
    return g.node("ShaderNodeVectorMath", {0: proj.outputs[0]}, operation="NORMALIZE").outputs[0]


def metal_brushed(g: Graph, p: dict) -> None:
    direction = p["brush_direction"]
    if direction == "radial":
        vec = g.coords()
        sep = g.node("ShaderNodeSeparateXYZ", {"Vector": vec})
        comb = g.node("ShaderNodeCombineXYZ", {"X": sep.outputs["X"], "Y": sep.outputs["Y"]})
        radius = g.node("ShaderNodeVectorMath", {0: comb.outputs[0]}, operation="LENGTH")
        streak = g.node(
            "ShaderNodeTexNoise",
            {
                "W": radius.outputs["Value"],
                "Scale": 1.0 / p["brush_scale_m"],
                "Detail": 8.0,
                "Roughness": 0.7,
            },
            noise_dimensions="1D",
        ).outputs["Fac"]
        tangent = g.node("ShaderNodeTangent", direction_type="RADIAL", axis="Z").outputs[0]
    else:
        axis = {"X": (1.0, 0.0, 0.0), "Y": (0.0, 1.0, 0.0), "Z": (0.0, 0.0, 1.0)}[direction]
        stretch = tuple(0.005 if a else 1.0 for a in axis)
        tex = g.node("ShaderNodeTexCoord")
        mapping = g.node(
            "ShaderNodeMapping",
            {"Vector": tex.outputs["Object"], "Scale": stretch, "Location": (p["offset"],) * 3},
        )
        streak = g.noise(mapping.outputs[0], p["brush_scale_m"], detail=8.0, roughness=0.7).outputs[
            "Fac"
        ]
        tangent = _axis_tangent(g, axis)
    g.set("Tangent", tangent)
    var = p["roughness_variation"]
    g.set("Roughness", g.math("MULTIPLY_ADD", streak, 2 * var, p["roughness"] - var))
    g.set("Base Color", g.shade(p["base_color"], streak, 0.08 * p["brush_strength"]))
    g.set("Normal", g.bump(streak, p["brush_strength"], 0.00015))


def metal_polished(g: Graph, p: dict) -> None:
    vec = g.coords()
    smudge = g.noise(vec, p["smudge_scale_m"], detail=3.0).outputs["Fac"]
    scratch_cells = g.voronoi(vec, p["scratch_scale_m"], "DISTANCE_TO_EDGE")
    scratches = g.ramp(scratch_cells.outputs["Distance"], 0.0, 0.03, 1.0, 0.0)
    density = g.ramp(
        g.noise(vec, p["scratch_scale_m"] * 4).outputs["Fac"],
        1.0 - p["scratch_density"] * 0.5,
        1.05 - p["scratch_density"] * 0.5,
    )
    scratches = g.math("MULTIPLY", scratches, density)
    rough = g.math("MULTIPLY_ADD", g.ramp(smudge, 0.4, 0.7), p["smudge_strength"], p["roughness"])
    g.set("Roughness", g.math("MULTIPLY_ADD", scratches, 0.25, rough, clamp=True))
    dents = g.noise(vec, 0.08, detail=2.0).outputs["Fac"]
    normal = g.bump(dents, p["dent_strength"], 0.004)
    g.set("Normal", g.bump(g.math("MULTIPLY", scratches, -1.0), 0.3, 0.0001, normal))


def metal_oxidised(g: Graph, p: dict) -> None:
    vec = g.coords()
    field = g.noise(vec, p["oxide_scale_m"], detail=8.0, roughness=0.6).outputs["Fac"]
    thr = 0.68 - 0.36 * p["oxide_coverage"]
    oxide = g.ramp(field, thr - 0.03, thr + 0.03)
    tone = g.noise(vec, p["oxide_scale_m"] * 0.25, detail=4.0).outputs["Fac"]
    oxide_col = g.shade(p["oxide_color"], tone, 0.35)
    g.set("Base Color", g.mix(oxide, p["base_color"], oxide_col))
    g.set("Metallic", g.math("SUBTRACT", 1.0, oxide))
    g.set("Roughness", g.mix(oxide, g.gray(p["metal_roughness"]), g.gray(p["oxide_roughness"])))
    pits = g.voronoi(vec, p["pit_scale_m"]).outputs["Distance"]
    height = g.math("MULTIPLY_ADD", oxide, 0.5, g.math("MULTIPLY", pits, oxide))
    g.set("Normal", g.bump(height, p["pit_strength"], 0.0008))


def painted_metal(g: Graph, p: dict) -> None:
    vec = g.coords()
    field = g.noise(vec, p["chip_scale_m"], detail=6.0, roughness=0.65).outputs["Fac"]
    thr = 0.72 - 0.4 * p["chip_coverage"]
    chips = g.ramp(field, thr - 0.01, thr + 0.01)
    g.set("Base Color", g.mix(chips, p["base_color"], p["metal_color"]))
    g.set("Metallic", chips)
    g.set("Roughness", g.mix(chips, g.gray(p["roughness"]), g.gray(0.35)))
    peel = g.noise(vec, p["orange_peel_m"], detail=1.0).outputs["Fac"]
    normal = g.bump(peel, p["orange_peel_strength"], 0.0002)
    g.set("Normal", g.bump(g.math("SUBTRACT", 1.0, chips), p["chip_depth"], 0.0004, normal))


def car_paint(g: Graph, p: dict) -> None:
    vec = g.coords()
    flakes = g.voronoi(vec, p["flake_scale_m"])
    sep = g.node("ShaderNodeSeparateColor", {"Color": flakes.outputs["Color"]})
    g.set("Base Color", g.shade(p["base_color"], sep.outputs[1], 0.25 * p["flake_strength"]))
    # Flakes tilt the base layer's normal only; the clear coat keeps the geometric normal.
    g.set("Normal", g.bump(sep.outputs[0], p["flake_strength"], 0.0002))
