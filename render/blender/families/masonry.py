"""Fired and cast building materials: ceramic, terracotta, concrete, plaster and brick.

The shared recipe is a porous mineral surface: pores, aggregate and crackle from Voronoi
cells, mottling and stains from noise, driving both colour and bump. Tiled ceramic and brick
add joints (grout, mortar) from a grid that needs a surface parametrisation, so it is drawn
on three planes and blended by the normal (``Graph.triplanar``). Part of the family
registry ``render.blender.families``; the node helpers are in ``render.blender.nodes``.
"""

from __future__ import annotations

from render.blender.nodes import Graph, Socket


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
