"""Shader-node graphs of the procedural material families.

Each builder receives the material, its Principled BSDF (already set from the principled
parameters such as ``roughness`` or ``coat``) and the entry's flat ``params``, and adds the
texture structure of its family: grain, veins, weave, pores, scratches. Lengths in params
are metres (object-space coordinates are scene units of ``render.assets.units.UNIT_M``).
"""

from __future__ import annotations

from collections.abc import Callable

import bpy

Builder = Callable[[bpy.types.Material, bpy.types.Node, dict], None]


def _uniform(mat: bpy.types.Material, bsdf: bpy.types.Node, params: dict) -> None:
    """A uniform material: the principled parameters alone (used for checks and baselines)."""
    mat.diffuse_color = (*[float(c) for c in params.get("base_color", (0.8, 0.8, 0.8))], 1.0)


BUILDERS: dict[str, Builder] = {"uniform": _uniform}
