"""The scene unit: one Blender unit is ``UNIT_M`` metres.

Meshes are built at their real-world size (``size_m`` in the mesh catalog, the largest side
of the bounding box) divided by ``UNIT_M``; a texture or procedural pattern whose physical
size is ``physical_size_m`` repeats every ``physical_size_m / UNIT_M`` scene units. Keeping
the unit at one metre makes Blender's own defaults (light sizes, bevel widths) read as
metres too.
"""

from __future__ import annotations

UNIT_M = 1.0


def to_scene_units(metres: float) -> float:
    """Length in metres -> length in scene units."""
    return metres / UNIT_M
