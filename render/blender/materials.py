"""Build Blender materials from material catalog entries.

* ``source == "procedural"``: a shader-node graph per family (``render.blender.families``,
  see ``assets.families``), driven entirely by the entry's flat ``params`` dict, so the
  same ID always builds the same node graph with the same values.
* ``source`` in matsynth / ambientcg / polyhaven: a PBR texture set (``maps``) on a
  Principled BSDF with box (triplanar) projection in object space, scaled to the set's
  physical size (``render.blender.texsets``); base colour is read as sRGB and every other
  map as non-colour data.

Texture coordinates are object-space positions in scene units (meshes are built at real
size), so ``physical_size_m`` and every procedural length parameter are in metres.
Anything that cannot be built raises ``render.errors.MaterialError(material_id, reason)``.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from render.blender import families
from render.blender.nodes import new_principled, set_constant
from render.blender.texsets import build_texture_set
from render.errors import MaterialError

# Flat parameter name -> Principled BSDF input. Any family may set these directly.
PRINCIPLED_INPUTS = {
    "base_color": "Base Color",
    "metallic": "Metallic",
    "roughness": "Roughness",
    "ior": "IOR",
    "specular": "Specular IOR Level",
    "anisotropic": "Anisotropic",
    "anisotropic_rotation": "Anisotropic Rotation",
    "subsurface": "Subsurface Weight",
    "subsurface_scale": "Subsurface Scale",
    "subsurface_radius": "Subsurface Radius",
    "coat": "Coat Weight",
    "coat_roughness": "Coat Roughness",
    "coat_ior": "Coat IOR",
    "sheen": "Sheen Weight",
    "sheen_roughness": "Sheen Roughness",
    "sheen_tint": "Sheen Tint",
    "transmission": "Transmission Weight",
    "thin_film": "Thin Film Thickness",
}


def _set_input(node: bpy.types.Node, name: str, value: object, material_id: str) -> None:
    socket = node.inputs.get(name)
    if socket is None:
        raise MaterialError(material_id, f"shader input {name!r} missing on {node.bl_idname}")
    set_constant(socket, value)


def principled_material(entry: dict, name: str) -> tuple[bpy.types.Material, bpy.types.Node]:
    """A material with an Output and a Principled BSDF set from the principled params."""
    material_id = entry.get("id", "?")
    mat, bsdf = new_principled(name)
    for key, socket in PRINCIPLED_INPUTS.items():
        if key in (entry.get("params") or {}):
            _set_input(bsdf, socket, entry["params"][key], material_id)
    return mat, bsdf


def build_material(entry: dict, base_dir: Path | None = None) -> bpy.types.Material:
    """Return a new material datablock for a material catalog entry."""
    material_id = entry.get("id", "?")
    source = entry.get("source")
    name = f"phieat-{material_id}"
    if source == "procedural":
        family = entry.get("family")
        builder = families.BUILDERS.get(family)
        if builder is None:
            raise MaterialError(
                material_id,
                f"unknown procedural family {family!r}; known: {sorted(families.BUILDERS)}",
            )
        mat, bsdf = principled_material(entry, name)
        try:
            builder(mat, bsdf, entry.get("params") or {})
        except (KeyError, TypeError, ValueError) as exc:
            bpy.data.materials.remove(mat)
            raise MaterialError(material_id, f"bad params for family {family!r}: {exc}") from exc
        return mat
    if source in ("matsynth", "ambientcg", "polyhaven"):
        return build_texture_set(entry, name, base_dir)
    raise MaterialError(
        material_id, f"unknown source {source!r} (procedural, matsynth, ambientcg, polyhaven)"
    )
