"""Shader-node graphs of the procedural material families (``assets.families``).

Each builder receives the material, its Principled BSDF (already set from the principled
parameters such as ``roughness`` or ``coat``) and the entry's flat ``params``, and adds the
structure of its family: growth rings, veins, brush streaks, weave, pores, chips. Lengths in
params are metres; texture coordinates are object-space positions in scene units of
``assets.units.UNIT_M`` (meshes are built at real size), so a 4 mm ring spacing is
4 mm on every object. Patterns that need a surface parametrisation (tiles, weave) are
projected on three planes and blended by the object-space normal (triplanar), so meshes
without good UVs still look right.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import bpy

from assets.units import UNIT_M
from render.blender.materials import set_constant

Builder = Callable[[bpy.types.Material, bpy.types.Node, dict], None]
Socket = bpy.types.NodeSocket
# A node input value: a constant, an RGB(A)/XYZ list, or an output socket to link from.
Value = float | int | list | tuple | bpy.types.NodeSocket


class Graph:
    """Small helper that creates and links shader nodes; inputs take numbers or sockets."""

    def __init__(self, mat: bpy.types.Material, bsdf: bpy.types.Node, params: dict) -> None:
        self.nt = mat.node_tree
        self.bsdf = bsdf
        self.params = params
        self._coords: Socket | None = None
        self._coords_key: tuple[float, float] | None = None

    def node(self, kind: str, inputs: dict | None = None, **props) -> bpy.types.Node:
        node = self.nt.nodes.new(kind)
        for key, value in props.items():
            setattr(node, key, value)
        for key, value in (inputs or {}).items():
            self.connect(value, node.inputs[key])
        return node

    def connect(self, value: Value, socket: Socket) -> None:
        if isinstance(value, bpy.types.NodeSocket):
            self.nt.links.new(value, socket)
        else:
            set_constant(socket, value)

    def set(self, name: str, value: Value) -> None:
        """Drive a Principled BSDF input."""
        self.connect(value, self.bsdf.inputs[name])

    # -------------------------------------------------------------- coordinates

    def coords(self, stretch: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Socket:
        """Object-space position in metres, rotated and offset by the material's params.

        ``stretch`` scales the *rotated* axes, so a (1, 1, 0.04) stretch elongates features
        along the pattern's own Z axis (the grain of wood, the lay of brushed metal).
        """
        off = float(self.params.get("offset", 0.0))
        rot = float(self.params.get("rotation", 0.0))
        key = (off, rot)
        if self._coords is None or self._coords_key != key:
            tex = self.node("ShaderNodeTexCoord")
            mapping = self.node(
                "ShaderNodeMapping",
                {
                    "Vector": tex.outputs["Object"],
                    "Location": (off, 0.7 * off, 1.3 * off),
                    "Rotation": (0.37 * rot, 0.61 * rot, rot),
                    "Scale": (UNIT_M,) * 3,
                },
            )
            self._coords, self._coords_key = mapping.outputs["Vector"], key
        if stretch == (1.0, 1.0, 1.0):
            return self._coords
        scaled = self.node(
            "ShaderNodeVectorMath", {0: self._coords, 1: stretch}, operation="MULTIPLY"
        )
        return scaled.outputs[0]

    def normal_weights(self, sharpness: float = 4.0) -> tuple[Socket, Socket, Socket]:
        """Triplanar blend weights from the object-space normal (sum to 1)."""
        tex = self.node("ShaderNodeTexCoord")
        sep = self.node("ShaderNodeSeparateXYZ", {"Vector": tex.outputs["Normal"]})
        powers = [
            self.math("POWER", self.math("ABSOLUTE", sep.outputs[a]), sharpness) for a in "XYZ"
        ]
        total = self.math("ADD", self.math("ADD", powers[0], powers[1]), powers[2])
        return tuple(self.math("DIVIDE", p, total) for p in powers)

    def triplanar(self, vec: Socket, fn: Callable[[Socket, Socket], Socket]) -> Socket:
        """Blend ``fn(u, v)`` over the YZ, XZ and XY planes by the normal's weights."""
        sep = self.node("ShaderNodeSeparateXYZ", {"Vector": vec})
        x, y, z = sep.outputs["X"], sep.outputs["Y"], sep.outputs["Z"]
        wx, wy, wz = self.normal_weights()
        parts = [fn(y, z), fn(x, z), fn(x, y)]
        acc = self.math("MULTIPLY", parts[0], wx)
        acc = self.math("MULTIPLY_ADD", parts[1], wy, acc)
        return self.math("MULTIPLY_ADD", parts[2], wz, acc)

    def warp(self, vec: Socket, size_m: float, amount_m: float) -> Socket:
        """Domain warp: shift ``vec`` by a smooth noise field (irregular cell shapes)."""
        field = self.noise(vec, size_m, detail=2.0).outputs["Color"]
        centred = self.node(
            "ShaderNodeVectorMath", {0: field, 1: (0.5, 0.5, 0.5)}, operation="SUBTRACT"
        ).outputs[0]
        shift = self.node(
            "ShaderNodeVectorMath", {0: centred, "Scale": 2 * amount_m}, operation="SCALE"
        ).outputs[0]
        return self.node("ShaderNodeVectorMath", {0: vec, 1: shift}, operation="ADD").outputs[0]

    # -------------------------------------------------------------- textures

    def noise(
        self,
        vec: Value,
        size_m: float,
        detail: float = 4.0,
        roughness: float = 0.5,
        distortion: float = 0.0,
    ) -> bpy.types.Node:
        return self.node(
            "ShaderNodeTexNoise",
            {
                "Vector": vec,
                "Scale": 1.0 / size_m,
                "Detail": detail,
                "Roughness": roughness,
                "Distortion": distortion,
            },
        )

    def voronoi(
        self, vec: Value, size_m: float, feature: str = "F1", randomness: float = 1.0
    ) -> bpy.types.Node:
        return self.node(
            "ShaderNodeTexVoronoi",
            {"Vector": vec, "Scale": 1.0 / size_m, "Randomness": randomness},
            feature=feature,
        )

    def wave(
        self,
        vec: Value,
        period_m: float,
        kind: str,
        direction: str,
        profile: str,
        distortion: float,
        detail: float = 4.0,
        detail_scale: float = 1.0,
        detail_roughness: float = 0.5,
    ) -> bpy.types.Node:
        # Blender's wave phase is 20*|p|*scale for rings and 10*(x+y+z)*scale for bands.
        factor = 20.0 if kind == "RINGS" else 10.0
        if kind == "BANDS" and direction == "DIAGONAL":
            factor *= math.sqrt(3.0)
        node = self.node(
            "ShaderNodeTexWave",
            {
                "Vector": vec,
                "Scale": 2 * math.pi / (factor * period_m),
                "Distortion": distortion,
                "Detail": detail,
                "Detail Scale": detail_scale,
                "Detail Roughness": detail_roughness,
            },
            wave_type=kind,
            wave_profile=profile,
        )
        if kind == "RINGS":
            node.rings_direction = direction
        else:
            node.bands_direction = direction
        return node

    # -------------------------------------------------------------- maths

    def math(
        self, op: str, a: Value, b: Value = 0.0, c: Value = 0.0, clamp: bool = False
    ) -> Socket:
        node = self.nt.nodes.new("ShaderNodeMath")
        node.operation = op
        node.use_clamp = clamp
        for i, value in enumerate((a, b, c)):
            self.connect(value, node.inputs[i])
        return node.outputs[0]

    def ramp(
        self,
        value: Value,
        lo: float,
        hi: float,
        out_lo: float = 0.0,
        out_hi: float = 1.0,
        smooth: bool = True,
    ) -> Socket:
        """Map ``value`` from [lo, hi] to [out_lo, out_hi], clamped (smoothstep if smooth)."""
        node = self.node(
            "ShaderNodeMapRange",
            {"Value": value, "From Min": lo, "From Max": hi, "To Min": out_lo, "To Max": out_hi},
            interpolation_type="SMOOTHSTEP" if smooth else "LINEAR",
        )
        node.clamp = True
        return node.outputs["Result"]

    def mix(self, fac: Value, a: Value, b: Value, blend: str = "MIX") -> Socket:
        node = self.node("ShaderNodeMix", data_type="RGBA", blend_type=blend)
        node.clamp_result = True
        self.connect(fac, node.inputs[0])
        self.connect(a, node.inputs[6])
        self.connect(b, node.inputs[7])
        return node.outputs[2]

    def shade(self, color: Value, fac: Value, amount: float) -> Socket:
        """``color * (1 + amount * (fac - 0.5) * 2)``: brighten/darken by a 0-1 signal."""
        scale = self.math("MULTIPLY_ADD", fac, 2 * amount, 1 - amount)
        return self.mix(1.0, color, self.gray(scale), "MULTIPLY")

    def gray(self, value: Value) -> Socket:
        node = self.node("ShaderNodeCombineColor")
        for i in range(3):
            self.connect(value, node.inputs[i])
        return node.outputs[0]

    def bump(
        self, height: Value, strength: float, distance_m: float, normal: Socket | None = None
    ) -> Socket:
        inputs = {
            "Height": height,
            "Strength": min(1.0, max(0.0, strength)),
            "Distance": distance_m / UNIT_M,
        }
        if normal is not None:
            inputs["Normal"] = normal
        return self.node("ShaderNodeBump", inputs).outputs["Normal"]


# ----------------------------------------------------------------------------- families


def wood(g: Graph, p: dict) -> None:
    vec = g.coords()
    shifted = g.node(
        "ShaderNodeVectorMath", {0: vec, 1: (p["log_offset_m"], 0.0, 0.0)}, operation="ADD"
    ).outputs[0]
    rings = g.wave(
        shifted,
        p["ring_spacing_m"],
        "RINGS",
        "Z",
        "SAW",
        p["ring_distortion"],
        detail=2.0,
        detail_scale=0.15,
        detail_roughness=0.4,
    )
    width = 0.55 - 0.4 * p["ring_sharpness"]
    late = g.ramp(rings.outputs["Fac"], 1.0 - width, 1.0)
    # Years differ: some rings are darker than others.
    years = g.noise(shifted, p["ring_spacing_m"] * 4, detail=1.0).outputs["Fac"]
    late = g.math("MULTIPLY", late, g.ramp(years, 0.3, 0.7, 0.45, 1.0))
    # Fibres and pores run along the grain (the pattern's Z axis).
    fibre_vec = g.coords(stretch=(1.0, 1.0, 0.04))
    fibre = g.noise(fibre_vec, p["grain_scale_m"], detail=6.0, roughness=0.6).outputs["Fac"]
    pore_vec = g.coords(stretch=(1.0, 1.0, 0.12))
    pores = g.noise(pore_vec, p["grain_scale_m"] * 0.6, detail=2.0).outputs["Fac"]
    pores = g.ramp(pores, 0.64, 0.72)
    color = g.mix(late, p["base_color"], p["dark_color"])
    color = g.shade(color, fibre, p["grain_strength"])
    color = g.mix(g.math("MULTIPLY", pores, 0.35), color, p["dark_color"])
    g.set("Base Color", color)
    g.set(
        "Roughness",
        g.math("MULTIPLY_ADD", pores, 0.15, g.math("MULTIPLY_ADD", late, 0.1, p["roughness"])),
    )
    height = g.math("MULTIPLY_ADD", fibre, 0.6, g.math("MULTIPLY", late, -0.4))
    height = g.math("SUBTRACT", height, g.math("MULTIPLY", pores, 0.5))
    g.set("Normal", g.bump(height, p["bump_strength"], 0.0006))


def marble(g: Graph, p: dict) -> None:
    vec = g.coords()

    def veins(period: float, width: float, distortion: float) -> Socket:
        w = g.wave(
            vec,
            period,
            "BANDS",
            "DIAGONAL",
            "SIN",
            distortion,
            detail=8.0,
            detail_scale=1.2,
            detail_roughness=0.6,
        )
        centred = g.math("ABSOLUTE", g.math("MULTIPLY_ADD", w.outputs["Fac"], 2.0, -1.0))
        return g.ramp(centred, 0.0, width, 1.0, 0.0)

    main = veins(p["vein_scale_m"], p["vein_width"], p["vein_distortion"])
    fine = veins(p["vein_scale_m"] * 0.37, p["vein_width"] * 0.4, p["vein_distortion"] * 1.3)
    vein = g.math("MAXIMUM", main, g.math("MULTIPLY", fine, 0.5))
    cloud = g.noise(vec, p["vein_scale_m"] * 0.5, detail=5.0, roughness=0.55).outputs["Fac"]
    base = g.shade(p["base_color"], cloud, p["cloud_strength"])
    color = g.mix(g.math("MULTIPLY", vein, p["vein_contrast"]), base, p["vein_color"])
    g.set("Base Color", color)
    g.set("Roughness", g.math("MULTIPLY_ADD", vein, 0.08, p["roughness"]))
    g.set("Subsurface Radius", (1.0, 0.9, 0.8))
    g.set("Normal", g.bump(vein, p["bump_strength"], 0.0003))


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


def plastic(g: Graph, p: dict) -> None:
    vec = g.coords()
    kind = p["texture_kind"]
    if kind == "stipple":
        height = g.voronoi(vec, p["texture_scale_m"], "SMOOTH_F1").outputs["Distance"]
        strength = p["bump_strength"]
    elif kind == "grain":
        height = g.noise(vec, p["texture_scale_m"], detail=8.0, roughness=0.7).outputs["Fac"]
        strength = p["bump_strength"]
    else:
        height = g.noise(vec, p["texture_scale_m"] * 20, detail=2.0).outputs["Fac"]
        strength = 0.15 * p["bump_strength"]
    g.set("Roughness", g.math("MULTIPLY_ADD", height, 0.1 * p["bump_strength"], p["roughness"]))
    g.set("Normal", g.bump(height, strength, 0.0002))


def rubber(g: Graph, p: dict) -> None:
    vec = g.coords()
    grain = g.noise(vec, p["bump_scale_m"], detail=6.0, roughness=0.6).outputs["Fac"]
    dust = g.ramp(g.noise(vec, 0.05, detail=4.0).outputs["Fac"], 0.6 - 0.3 * p["dust"], 0.75)
    dust = g.math("MULTIPLY", dust, p["dust"])
    g.set("Base Color", g.mix(dust, p["base_color"], (0.32, 0.3, 0.27)))
    g.set("Roughness", g.math("MULTIPLY_ADD", dust, 0.3, p["roughness"], clamp=True))
    g.set("Normal", g.bump(grain, p["bump_strength"], 0.0003))


def _tiles(g: Graph, vec: Socket, size: float) -> Socket:
    """Triplanar grout mask (1 in the grout lines) of square tiles of ``size`` metres."""
    gap = 0.04

    def grid(u: Socket, v: Socket) -> Socket:
        def line(c: Socket) -> Socket:
            frac = g.math("FRACT", g.math("DIVIDE", c, size))
            dist = g.math("MINIMUM", frac, g.math("SUBTRACT", 1.0, frac))
            return g.ramp(dist, gap * 0.5, gap, 1.0, 0.0)

        return g.math("MAXIMUM", line(u), line(v))

    return g.triplanar(vec, grid)


def ceramic(g: Graph, p: dict) -> None:
    vec = g.coords()
    glaze = g.noise(vec, p["glaze_scale_m"], detail=4.0).outputs["Fac"]
    color = g.shade(p["base_color"], glaze, p["glaze_variation"])
    crack = g.voronoi(vec, p["crackle_scale_m"], "DISTANCE_TO_EDGE").outputs["Distance"]
    crack = g.math("MULTIPLY", g.ramp(crack, 0.0, 0.035, 1.0, 0.0), p["crackle_strength"])
    color = g.mix(g.math("MULTIPLY", crack, 0.5), color, (0.1, 0.09, 0.08))
    height = g.math("MULTIPLY", crack, -1.0)
    rough = g.math("MULTIPLY_ADD", glaze, 0.05, p["roughness"])
    if int(p.get("tiled", 0)):
        grout = _tiles(g, vec, p["tile_size_m"])
        color = g.mix(grout, color, p["grout_color"])
        rough = g.mix(grout, g.gray(rough), g.gray(0.9))
        g.set("Coat Weight", g.math("MULTIPLY", g.math("SUBTRACT", 1.0, grout), p["coat"]))
        height = g.math("SUBTRACT", height, grout)
    g.set("Base Color", color)
    g.set("Roughness", rough)
    g.set("Normal", g.bump(height, 0.6, 0.0006))


def terracotta(g: Graph, p: dict) -> None:
    vec = g.coords()
    mottle = g.noise(vec, p["mottle_scale_m"], detail=5.0, roughness=0.6).outputs["Fac"]
    color = g.shade(p["base_color"], mottle, p["mottle_strength"])
    bloom = g.ramp(g.noise(vec, 0.06, detail=6.0).outputs["Fac"], 0.5, 0.75)
    bloom = g.math("MULTIPLY", bloom, p["efflorescence"])
    g.set("Base Color", g.mix(bloom, color, (0.8, 0.76, 0.68)))
    pores = g.voronoi(vec, p["pore_scale_m"]).outputs["Distance"]
    pits = g.ramp(pores, 0.05, 0.25)
    g.set("Roughness", g.math("MULTIPLY_ADD", bloom, 0.1, p["roughness"], clamp=True))
    fine = g.noise(vec, p["pore_scale_m"] * 0.5, detail=4.0).outputs["Fac"]
    g.set("Normal", g.bump(g.math("MULTIPLY_ADD", fine, 0.5, pits), p["pore_strength"], 0.0003))


def concrete(g: Graph, p: dict) -> None:
    vec = g.coords()
    agg = g.voronoi(vec, p["aggregate_scale_m"])
    sep = g.node("ShaderNodeSeparateColor", {"Color": agg.outputs["Color"]})
    color = g.shade(p["base_color"], sep.outputs[0], p["aggregate_contrast"])
    stain = g.noise(vec, p["stain_scale_m"], detail=6.0, roughness=0.65).outputs["Fac"]
    color = g.shade(color, g.ramp(stain, 0.3, 0.7, 1.0, 0.0), p["stain_strength"] * 0.5)
    pores = g.voronoi(g.coords((1.0, 1.0, 1.0)), p["pore_scale_m"]).outputs["Distance"]
    holes = g.ramp(pores, 0.08, 0.14, 1.0, 0.0)
    color = g.mix(g.math("MULTIPLY", holes, 0.6), color, (0.08, 0.08, 0.08))
    g.set("Base Color", color)
    fine = g.noise(vec, 0.0015, detail=4.0).outputs["Fac"]
    g.set("Roughness", g.math("MULTIPLY_ADD", fine, 0.1, p["roughness"] - 0.05))
    height = g.math("SUBTRACT", g.math("MULTIPLY", fine, 0.3), holes)
    g.set("Normal", g.bump(height, p["pore_strength"], 0.0008))


def plaster(g: Graph, p: dict) -> None:
    vec = g.coords()
    stucco = g.noise(vec, p["stucco_scale_m"], detail=6.0, roughness=0.6).outputs["Fac"]
    trowel_vec = g.coords(stretch=(1.0, 0.2, 1.0))
    trowel = g.noise(trowel_vec, p["trowel_scale_m"], detail=3.0, distortion=0.5).outputs["Fac"]
    tone = g.noise(vec, 0.2, detail=3.0).outputs["Fac"]
    g.set("Base Color", g.shade(p["base_color"], tone, p["tone_variation"]))
    smooth = g.ramp(trowel, 0.45, 0.6)
    g.set("Roughness", g.math("MULTIPLY_ADD", smooth, -0.25 * p["trowel_strength"], p["roughness"]))
    normal = g.bump(stucco, p["stucco_strength"], 0.003)
    g.set("Normal", g.bump(smooth, p["trowel_strength"], 0.0008, normal))


def granite(g: Graph, p: dict) -> None:
    vec = g.coords()
    cells = g.voronoi(
        g.warp(vec, p["speck_scale_m"] * 2, p["speck_scale_m"] * 0.4), p["speck_scale_m"]
    )
    sep = g.node("ShaderNodeSeparateColor", {"Color": cells.outputs["Color"]})
    specks = g.ramp(sep.outputs[0], 1.0 - p["speck_amount"], 1.0 - p["speck_amount"] + 0.01)
    mid = g.ramp(sep.outputs[1], 0.5, 0.51)
    color = g.mix(
        g.math("MULTIPLY", mid, 0.35), p["base_color"], g.shade(p["base_color"], 0.0, 0.5)
    )
    color = g.mix(specks, color, p["speck_color"])
    small = g.voronoi(vec, p["speck_scale_m"] * 0.3)
    sep2 = g.node("ShaderNodeSeparateColor", {"Color": small.outputs["Color"]})
    color = g.shade(color, sep2.outputs[0], 0.15)
    g.set("Base Color", color)
    sparkle = g.ramp(sep2.outputs[2], 1.0 - 0.15 * p["sparkle"], 1.0 - 0.15 * p["sparkle"] + 0.001)
    g.set("Metallic", g.math("MULTIPLY", sparkle, 0.8))
    g.set("Roughness", g.mix(sparkle, g.gray(p["roughness"]), g.gray(0.1)))
    edges = g.voronoi(vec, p["speck_scale_m"], "DISTANCE_TO_EDGE").outputs["Distance"]
    g.set("Normal", g.bump(g.ramp(edges, 0.0, 0.1), p["bump_strength"], 0.0002))


def sandstone(g: Graph, p: dict) -> None:
    vec = g.coords()
    bands = g.wave(
        vec,
        p["band_scale_m"],
        "BANDS",
        "Z",
        "SIN",
        p["band_distortion"],
        detail=4.0,
        detail_scale=0.6,
    )
    fac = g.math("MULTIPLY", bands.outputs["Fac"], p["band_contrast"])
    grain = g.noise(vec, p["grain_scale_m"], detail=2.0).outputs["Fac"]
    color = g.mix(fac, p["base_color"], p["band_color"])
    g.set("Base Color", g.shade(color, grain, 0.12))
    g.set("Roughness", p["roughness"])
    normal = g.bump(grain, p["grain_strength"], 0.0004)
    g.set("Normal", g.bump(bands.outputs["Fac"], 0.15, 0.001, normal))


def brick(g: Graph, p: dict) -> None:
    vec = g.coords()
    length, height, gap = p["brick_length_m"], p["brick_height_m"], p["mortar_m"]

    def rows(v: Socket) -> Socket:
        return g.math("FLOOR", g.math("DIVIDE", v, height))

    def shifted(u: Socket, v: Socket) -> Socket:
        """Position along the course in brick lengths; every other course is half offset."""
        half = g.math("MULTIPLY", g.math("MODULO", g.math("ABSOLUTE", rows(v)), 2.0), 0.5)
        return g.math("ADD", g.math("DIVIDE", u, length), half)

    def mortar(u: Socket, v: Socket) -> Socket:
        fu = g.math("FRACT", shifted(u, v))
        fv = g.math("FRACT", g.math("DIVIDE", v, height))
        du = g.math("MULTIPLY", g.math("MINIMUM", fu, g.math("SUBTRACT", 1.0, fu)), length)
        dv = g.math("MULTIPLY", g.math("MINIMUM", fv, g.math("SUBTRACT", 1.0, fv)), height)
        edge = g.math("MINIMUM", du, dv)
        return g.ramp(edge, gap * 0.35, gap * 0.6, 1.0, 0.0)

    def tint(u: Socket, v: Socket) -> Socket:
        idx = g.node("ShaderNodeCombineXYZ", {"X": g.math("FLOOR", shifted(u, v)), "Y": rows(v)})
        return g.node(
            "ShaderNodeTexWhiteNoise", {"Vector": idx.outputs[0]}, noise_dimensions="3D"
        ).outputs["Value"]

    joints = g.triplanar(vec, mortar)
    shade = g.triplanar(vec, tint)
    pores = g.noise(vec, p["pore_scale_m"], detail=4.0, roughness=0.6).outputs["Fac"]
    faces = g.shade(g.shade(p["base_color"], shade, p["tint_variation"]), pores, 0.15)
    g.set("Base Color", g.mix(joints, faces, g.shade(p["mortar_color"], pores, 0.2)))
    g.set("Roughness", g.math("MULTIPLY_ADD", joints, 0.05, p["roughness"], clamp=True))
    height_field = g.math("SUBTRACT", g.math("MULTIPLY", pores, 0.25), joints)
    g.set("Normal", g.bump(height_field, p["bump_strength"], 0.004))


def fabric(g: Graph, p: dict) -> None:
    vec = g.coords()
    spacing = p["thread_spacing_m"]

    def cells(u: Socket, v: Socket) -> tuple[Socket, Socket]:
        return g.math("DIVIDE", u, spacing), g.math("DIVIDE", v, spacing)

    def over(u: Socket, v: Socket) -> Socket:
        """1 where the weft thread lies on top (plain weave: a checkerboard of crossings)."""
        uu, vv = cells(u, v)
        parity = g.math("MODULO", g.math("ADD", g.math("FLOOR", uu), g.math("FLOOR", vv)), 2.0)
        return g.math("ABSOLUTE", parity)

    def profile(u: Socket, v: Socket) -> Socket:
        """Height of the visible thread: rounded across it, dipping where it goes under."""
        uu, vv = cells(u, v)
        across_u = g.math("SINE", g.math("MULTIPLY", g.math("FRACT", uu), math.pi))
        across_v = g.math("SINE", g.math("MULTIPLY", g.math("FRACT", vv), math.pi))
        warp = g.math("MULTIPLY", across_u, g.math("POWER", across_v, 0.35))
        weft = g.math("MULTIPLY", across_v, g.math("POWER", across_u, 0.35))
        top = over(u, v)
        return g.math("MULTIPLY_ADD", top, g.math("SUBTRACT", weft, warp), warp)

    def thread_tint(u: Socket, v: Socket) -> Socket:
        """A per-thread brightness jitter (yarns are never perfectly even)."""
        uu, vv = cells(u, v)
        idx = g.node("ShaderNodeCombineXYZ", {"X": g.math("FLOOR", uu), "Y": g.math("FLOOR", vv)})
        return g.node(
            "ShaderNodeTexWhiteNoise", {"Vector": idx.outputs[0]}, noise_dimensions="3D"
        ).outputs["Value"]

    on_top = g.triplanar(vec, over)
    height = g.triplanar(vec, profile)
    weft_col = g.mix(p["weft_mix"], p["base_color"], p["weft_color"])
    fuzz = g.noise(vec, spacing * 0.3, detail=6.0).outputs["Fac"]
    color = g.mix(on_top, p["base_color"], weft_col)
    color = g.shade(color, height, 0.45 * p["weave_strength"])
    gaps = g.ramp(height, 0.0, 0.3, 0.55, 1.0)  # shadowed gaps between the yarns
    color = g.mix(1.0, color, g.gray(gaps), "MULTIPLY")
    color = g.shade(color, g.triplanar(vec, thread_tint), 0.12)
    g.set("Base Color", g.shade(color, fuzz, 0.3 * p["fuzz"]))
    g.set("Roughness", p["roughness"])
    g.set("Normal", g.bump(height, p["weave_strength"], spacing * 0.3))


def leather(g: Graph, p: dict) -> None:
    vec = g.coords()
    cells = g.voronoi(vec, p["grain_scale_m"], "DISTANCE_TO_EDGE", 0.9).outputs["Distance"]
    crease = g.ramp(cells, 0.0, 0.2, 1.0, 0.0)
    wrinkle = g.noise(g.coords((1.0, 0.3, 1.0)), p["wrinkle_scale_m"], detail=4.0).outputs["Fac"]
    wear = g.ramp(g.noise(vec, 0.05, detail=5.0).outputs["Fac"], 0.55, 0.7)
    wear = g.math("MULTIPLY", wear, p["wear"])
    color = g.shade(p["base_color"], g.math("SUBTRACT", 1.0, crease), 0.25)
    color = g.mix(wear, color, g.shade(p["base_color"], 1.0, 0.4))
    g.set("Base Color", color)
    g.set("Roughness", g.math("MULTIPLY_ADD", g.math("ADD", crease, wear), 0.15, p["roughness"]))
    height = g.math("MULTIPLY_ADD", wrinkle, p["wrinkle_strength"], g.math("MULTIPLY", crease, -1))
    g.set("Normal", g.bump(height, p["grain_strength"], 0.001))


def ground(g: Graph, p: dict) -> None:
    vec = g.coords()
    clump = g.noise(vec, p["clump_scale_m"], detail=8.0, roughness=0.65).outputs["Fac"]
    pebbles = g.voronoi(
        g.warp(vec, p["pebble_scale_m"] * 1.5, p["pebble_scale_m"] * 0.35), p["pebble_scale_m"]
    )
    radius = 0.3 + 0.35 * p["pebble_amount"]
    dome = g.ramp(pebbles.outputs["Distance"], radius, radius * 0.5)
    dome = g.math("MULTIPLY", dome, 1.0 if p["pebble_amount"] > 0.02 else 0.0)
    sep = g.node("ShaderNodeSeparateColor", {"Color": pebbles.outputs["Color"]})
    stones = g.shade(g.mix(0.45, p["stone_color"], p["base_color"]), sep.outputs[0], 0.6)
    stones = g.shade(stones, clump, 0.3)
    soil = g.shade(p["base_color"], clump, 0.35)
    color = g.mix(dome, soil, stones)
    wet = p["moisture"]
    g.set("Base Color", g.shade(color, 0.0, 0.4 * wet))
    g.set("Roughness", g.math("MULTIPLY_ADD", dome, -0.1, p["roughness"] * (1 - 0.55 * wet)))
    fine = g.noise(vec, 0.001, detail=3.0).outputs["Fac"]
    height = g.math("ADD", g.math("MULTIPLY", clump, 0.6), g.math("MULTIPLY_ADD", fine, 0.2, dome))
    g.set("Normal", g.bump(height, p["bump_strength"], 0.004))


def uniform(g: Graph, p: dict) -> None:
    """A uniform material: the principled parameters alone (checks and baselines)."""
    g.set("Base Color", p.get("base_color", (0.8, 0.8, 0.8)))


_FAMILY_FUNCS = {
    "wood": wood,
    "marble": marble,
    "metal-brushed": metal_brushed,
    "metal-polished": metal_polished,
    "metal-oxidised": metal_oxidised,
    "painted-metal": painted_metal,
    "car-paint": car_paint,
    "plastic": plastic,
    "rubber": rubber,
    "ceramic": ceramic,
    "terracotta": terracotta,
    "concrete": concrete,
    "plaster": plaster,
    "granite": granite,
    "sandstone": sandstone,
    "brick": brick,
    "fabric": fabric,
    "leather": leather,
    "ground": ground,
    "uniform": uniform,
}


def _wrap(fn: Callable[[Graph, dict], None]) -> Builder:
    def build(mat: bpy.types.Material, bsdf: bpy.types.Node, params: dict) -> None:
        fn(Graph(mat, bsdf, params), params)

    build.__doc__ = fn.__doc__
    return build


BUILDERS: dict[str, Builder] = {name: _wrap(fn) for name, fn in _FAMILY_FUNCS.items()}
