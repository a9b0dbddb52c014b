"""Polymers: plastic and rubber.

The simplest recipe: on a dielectric set by the Principled parameters, one noise or Voronoi
field (stipple, grain or a broad undulation for plastic; grain for rubber) drives a low bump
and a small roughness change, and rubber gets patches of dust. Part of the family registry
``render.blender.families``; the node helpers are in ``render.blender.nodes``.
"""

from __future__ import annotations

from render.blender.nodes import Graph


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
