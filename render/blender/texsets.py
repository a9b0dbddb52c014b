"""PBR texture sets (MatSynth / ambientCG / Poly Haven) as Blender materials.

Maps are projected in object space, so meshes without good UVs still look right: colour
and scalar maps use the Image Texture node's box projection; the normal map is sampled on
the three axis planes, each sample's tangent-space offsets are applied along that plane's
axes and the three results are blended by the normal (triplanar). Texture coordinates are
object positions divided by the set's ``physical_size_m`` (metres, one scene unit =
``UNIT_M`` metres), so a 2 m wide floor scan repeats every 2 m.

Colour spaces: base colour is sRGB, every other map Non-Color. DirectX normal maps
(``normal_convention: "dx"``) get their green channel flipped. Missing maps fall back to
defaults (roughness 0.5, metallic 0, flat normal, opaque); a missing base colour, a missing
file or an unreadable image raises ``MaterialError`` naming the map and the file. The
ambient-occlusion map is not used: Cycles computes occlusion itself.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from assets.catalog import PathEscapeError, asset_path
from assets.units import UNIT_M
from render.blender.nodes import Graph, new_principled
from render.errors import MaterialError

DEFAULTS = {"roughness": 0.5, "metallic": 0.0}
BOX_BLEND = 0.25


def _load(material_id: str, name: str, ref: str, base_dir: Path | None) -> bpy.types.Image:
    try:
        path = asset_path(ref, base_dir)
    except PathEscapeError as exc:
        raise MaterialError(material_id, f"map {name!r}: {exc}") from exc
    if not path.is_file():
        raise MaterialError(material_id, f"map {name!r}: file {path} does not exist")
    try:
        image = bpy.data.images.load(str(path), check_existing=True)
    except RuntimeError as exc:
        raise MaterialError(material_id, f"map {name!r}: cannot read {path}: {exc}") from exc
    # Blender loads lazily: touching the size forces the decode, which fails on corrupt files.
    if image.size[0] == 0 or image.size[1] == 0 or not image.has_data:
        bpy.data.images.remove(image)
        raise MaterialError(material_id, f"map {name!r}: {path} is not a readable image")
    image.colorspace_settings.name = "sRGB" if name == "basecolor" else "Non-Color"
    return image


def build_texture_set(entry: dict, name: str, base_dir: Path | None = None) -> bpy.types.Material:
    """A Principled material from the entry's ``maps`` with triplanar projection."""
    material_id = entry.get("id", "?")
    maps = entry.get("maps") or {}
    if not maps.get("basecolor"):
        raise MaterialError(material_id, "texture set has no 'basecolor' map")
    size = float(entry.get("physical_size_m") or 1.0)
    if not size > 0:
        raise MaterialError(material_id, f"physical_size_m must be > 0, got {size}")
    convention = entry.get("normal_convention", "gl")
    if convention not in ("gl", "dx"):
        raise MaterialError(material_id, f"normal_convention {convention!r} must be 'gl' or 'dx'")
    images = {k: _load(material_id, k, v, base_dir) for k, v in maps.items() if v and k != "ao"}

    mat, bsdf = new_principled(name)
    g = Graph(mat, bsdf, {})
    tex = g.node("ShaderNodeTexCoord")
    coords = g.node(
        "ShaderNodeMapping", {"Vector": tex.outputs["Object"], "Scale": (UNIT_M / size,) * 3}
    ).outputs["Vector"]

    def box(image: bpy.types.Image) -> bpy.types.Node:
        node = g.node("ShaderNodeTexImage", {"Vector": coords}, projection="BOX")
        node.image = image
        node.projection_blend = BOX_BLEND
        return node

    g.set("Base Color", box(images["basecolor"]).outputs["Color"])
    for key, socket in (("roughness", "Roughness"), ("metallic", "Metallic")):
        if key in images:
            g.set(socket, box(images[key]).outputs["Color"])
        else:
            g.set(socket, DEFAULTS[key])
    if "opacity" in images:
        g.set("Alpha", box(images["opacity"]).outputs["Color"])
    if "normal" in images:
        g.set("Normal", _triplanar_normal(g, coords, images["normal"], convention == "dx"))
    elif "height" in images:
        height = box(images["height"]).outputs["Color"]
        g.set("Normal", g.bump(height, 1.0, 0.005 * size))
    return mat


def _triplanar_normal(g: Graph, coords, image: bpy.types.Image, directx: bool):
    """World-space normal from a tangent-space map sampled on the three axis planes."""
    sep = g.node("ShaderNodeSeparateXYZ", {"Vector": coords})
    x, y, z = sep.outputs["X"], sep.outputs["Y"], sep.outputs["Z"]
    tex = g.node("ShaderNodeTexCoord")
    normal = tex.outputs["Normal"]  # object space
    wx, wy, wz = g.normal_weights()
    nsep = g.node("ShaderNodeSeparateXYZ", {"Vector": normal})
    n = [nsep.outputs[a] for a in "XYZ"]
    acc = None
    # (u, v, axes the offsets move along, blend weight)
    for u, v, (iu, iv), w in ((y, z, (1, 2), wx), (x, z, (0, 2), wy), (x, y, (0, 1), wz)):
        uv = g.node("ShaderNodeCombineXYZ", {"X": u, "Y": v})
        node = g.node("ShaderNodeTexImage", {"Vector": uv.outputs[0]}, projection="FLAT")
        node.image = image
        node.interpolation = "Linear"
        rgb = g.node("ShaderNodeSeparateColor", {"Color": node.outputs["Color"]})
        du = g.math("MULTIPLY_ADD", rgb.outputs[0], 2.0, -1.0)
        green = rgb.outputs[1]
        if directx:
            green = g.math("SUBTRACT", 1.0, green)
        dv = g.math("MULTIPLY_ADD", green, 2.0, -1.0)
        comps = list(n)
        comps[iu] = g.math("ADD", comps[iu], du)
        comps[iv] = g.math("ADD", comps[iv], dv)
        vec = g.node("ShaderNodeCombineXYZ", {"X": comps[0], "Y": comps[1], "Z": comps[2]})
        scaled = g.node("ShaderNodeVectorMath", {0: vec.outputs[0], "Scale": w}, operation="SCALE")
        if acc is None:
            acc = scaled.outputs[0]
        else:
            acc = g.node(
                "ShaderNodeVectorMath", {0: acc, 1: scaled.outputs[0]}, operation="ADD"
            ).outputs[0]
    unit = g.node("ShaderNodeVectorMath", {0: acc}, operation="NORMALIZE").outputs[0]
    world = g.node(
        "ShaderNodeVectorTransform",
        {"Vector": unit},
        vector_type="NORMAL",
        convert_from="OBJECT",
        convert_to="WORLD",
    )
    return world.outputs[0]
