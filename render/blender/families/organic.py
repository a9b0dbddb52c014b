"""Fibre materials of plant and animal origin: wood, fabric and leather.

Each follows the direction of its fibres: wood's rings, fibres and pores run along the
pattern's Z axis (stretched coordinates), fabric's warp and weft threads are a plain weave
drawn on three planes and blended by the normal (``Graph.triplanar``), and leather's grain
is a net of creases (Voronoi cell edges) with wrinkles along one axis. Part of the family
registry ``render.blender.families``; the node helpers are in ``render.blender.nodes``.
"""

from __future__ import annotations

import math

from render.blender.nodes import Graph, Socket


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
