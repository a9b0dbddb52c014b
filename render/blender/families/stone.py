"""Natural stone and soil: marble, granite, sandstone and ground.

Two shared recipes: strata and veins are wave bands distorted by their own detail noise
(marble's veins are the band centres, sandstone's strata the band values), and specks and
pebbles are Voronoi cells of a domain-warped position (``Graph.warp``) so they are not
regular. Part of the family registry ``render.blender.families``; the node helpers are in
``render.blender.nodes``.
"""

from __future__ import annotations

from render.blender.nodes import Graph, Socket


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
