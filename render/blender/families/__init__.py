"""Shader-node graphs of the procedural material families (``assets.families``): the registry.

``BUILDERS`` maps a family name to its builder. Each builder receives the material, its
Principled BSDF (already set from the principled parameters such as ``roughness`` or
``coat``) and the entry's flat ``params``, and adds the structure of its family: growth
rings, veins, brush streaks, weave, pores, chips. The recipes live in one module per group
of families that share one:

* ``metals``: streaks, scratches, oxide and paint chips over a metallic base;
* ``stone``: natural stone and soil, veins and strata from wave bands, specks and pebbles
  from warped Voronoi cells;
* ``masonry``: fired and cast building materials, pores and aggregate from Voronoi cells,
  tile grout and brick mortar from a triplanar grid;
* ``organic``: fibre materials, wood grain along an axis, woven threads, creased hide;
* ``polymers``: one noise or cell field for bump and roughness on a dielectric.

Lengths in params are metres; texture coordinates are object-space positions in scene units
of ``assets.units.UNIT_M`` (meshes are built at real size), so a 4 mm ring spacing is 4 mm
on every object. Patterns that need a surface parametrisation (tiles, weave) are projected
on three planes and blended by the object-space normal (triplanar), so meshes without good
UVs still look right. The node helpers they share are in ``render.blender.nodes``.
"""

from __future__ import annotations

from collections.abc import Callable

import bpy

from render.blender.families import masonry, metals, organic, polymers, stone
from render.blender.nodes import Graph

Builder = Callable[[bpy.types.Material, bpy.types.Node, dict], None]


def uniform(g: Graph, p: dict) -> None:
    """A uniform material: the principled parameters alone (checks and baselines)."""
    g.set("Base Color", p.get("base_color", (0.8, 0.8, 0.8)))


_FAMILY_FUNCS = {
    "wood": organic.wood,
    "marble": stone.marble,
    "metal-brushed": metals.metal_brushed,
    "metal-polished": metals.metal_polished,
    "metal-oxidised": metals.metal_oxidised,
    "painted-metal": metals.painted_metal,
    "car-paint": metals.car_paint,
    "plastic": polymers.plastic,
    "rubber": polymers.rubber,
    "ceramic": masonry.ceramic,
    "terracotta": masonry.terracotta,
    "concrete": masonry.concrete,
    "plaster": masonry.plaster,
    "granite": stone.granite,
    "sandstone": stone.sandstone,
    "brick": masonry.brick,
    "fabric": organic.fabric,
    "leather": organic.leather,
    "ground": stone.ground,
    "uniform": uniform,
}


def _wrap(fn: Callable[[Graph, dict], None]) -> Builder:
    def build(mat: bpy.types.Material, bsdf: bpy.types.Node, params: dict) -> None:
        fn(Graph(mat, bsdf, params), params)

    build.__doc__ = fn.__doc__
    return build


BUILDERS: dict[str, Builder] = {name: _wrap(fn) for name, fn in _FAMILY_FUNCS.items()}
