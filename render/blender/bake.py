"""Bake a procedural material into a PBR texture set on disk (MatSynth, ambientCG, Poly Haven).

Used to make texture-set fixtures without downloads (tests, demos) and to export the
procedural library for other renderers::

    from render.blender.bake import bake_texture_set
    maps = bake_texture_set(entry, "out/sets", layout="ambientcg", size=64, tile_m=0.2)

A flat ``tile_m`` x ``tile_m`` metre square with UVs carries the material. Cycles bakes
the tangent-space normal (OpenGL convention; a DirectX copy has its green channel flipped);
base colour (written as sRGB), roughness and metallic are baked as the emission of the
Principled inputs themselves. Files get their final names only after every bake worked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bmesh
import bpy
import numpy as np
from PIL import Image

from assets.texsets import map_file_names
from render.blender import materials
from render.blender.process import silenced

BAKE_OBJECT = "phieat-bake-plane"


def _plane(tile_m: float) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(BAKE_OBJECT)
    bm = bmesh.new()
    bm.loops.layers.uv.new("UVMap")
    bmesh.ops.create_grid(bm, x_segments=1, y_segments=1, size=tile_m / 2, calc_uvs=True)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(BAKE_OBJECT, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _bake(
    obj: bpy.types.Object,
    mat: bpy.types.Material,
    kind: str,
    size: int,
    colorspace: str,
    quiet: bool = True,
) -> np.ndarray:
    scene = bpy.context.scene
    image = bpy.data.images.new(f"phieat-bake-{kind}", size, size, alpha=False, float_buffer=True)
    image.colorspace_settings.name = colorspace
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    mat.node_tree.nodes.active = node
    bake = scene.render.bake
    bake.target = "IMAGE_TEXTURES"
    bake.margin = 0
    bake.use_clear = True
    if kind == "DIFFUSE":
        bake.use_pass_direct = False
        bake.use_pass_indirect = False
        bake.use_pass_color = True
    if kind == "NORMAL":
        bake.normal_space = "TANGENT"
        bake.normal_r, bake.normal_g, bake.normal_b = "POS_X", "POS_Y", "POS_Z"
    for other in list(bpy.context.scene.objects):
        if other is not None and other != obj:
            other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    with silenced(quiet):  # the bake operator reports to stdout
        bpy.ops.object.bake(type=kind)
    pixels = np.empty(size * size * 4, np.float32)
    image.pixels.foreach_get(pixels)
    mat.node_tree.nodes.remove(node)
    bpy.data.images.remove(image)
    return pixels.reshape(size, size, 4)[::-1, :, :3]  # Blender rows are bottom-up


def _input_material(mat: bpy.types.Material, socket_name: str) -> bpy.types.Material:
    """A copy whose surface emits one Principled input, so an EMIT bake records it."""
    copy = mat.copy()
    nt = copy.node_tree
    bsdf = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    out = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeOutputMaterial")
    emit = nt.nodes.new("ShaderNodeEmission")
    socket = bsdf.inputs[socket_name]
    if socket.is_linked:
        nt.links.new(socket.links[0].from_socket, emit.inputs["Color"])
    elif socket.type == "RGBA":
        emit.inputs["Color"].default_value = socket.default_value
    else:
        v = socket.default_value
        emit.inputs["Color"].default_value = (v, v, v, 1.0)
    nt.links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return copy


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    c = np.clip(linear, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def _save(array: np.ndarray, path: Path) -> None:
    data = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(data).save(path, format="PNG")


def bake_texture_set(
    entry: dict,
    out_dir: str | Path,
    layout: str,
    size: int = 64,
    tile_m: float = 0.2,
    name: str | None = None,
    samples: int = 1,
    directx: bool = False,
) -> dict[str, Path]:
    """Bake ``entry`` (a procedural material) into ``out_dir`` in ``layout``; return the maps."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    saved_samples = scene.cycles.samples
    scene.cycles.samples = samples
    name = name or entry["id"].replace("-", "_")
    out_dir = Path(out_dir)
    folder = out_dir / (name if layout != "ambientcg" else f"{name}_1K-PNG")
    folder.mkdir(parents=True, exist_ok=True)
    files = map_file_names(layout, name)
    obj = _plane(tile_m)
    mat = materials.build_material(entry)
    obj.data.materials.append(mat)
    extra: list[bpy.types.Material] = []

    def emitted(socket_name: str) -> np.ndarray:
        copy = _input_material(mat, socket_name)
        extra.append(copy)
        obj.data.materials[0] = copy
        return _bake(obj, copy, "EMIT", size, "Non-Color")

    try:
        normal = _bake(obj, mat, "NORMAL", size, "Non-Color")
        # Base colour, roughness and metallic are the Principled inputs themselves (a
        # diffuse-colour bake would turn metals black), written as sRGB / linear data.
        base = _to_srgb(emitted("Base Color"))
        rough = emitted("Roughness")[..., 0]
        metal = emitted("Metallic")[..., 0]
    finally:
        scene.cycles.samples = saved_samples
        mesh = obj.data
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
        for m in (mat, *extra):
            bpy.data.materials.remove(m)
    if directx:
        normal = normal.copy()
        normal[..., 1] = 1.0 - normal[..., 1]
    normal_key = "normal_dx" if directx and "normal_dx" in files else "normal"
    arrays = {"basecolor": base, "roughness": rough, normal_key: normal, "metallic": metal}
    written: dict[str, Path] = {}
    tmp_paths = []
    for key, array in arrays.items():
        final = folder / files[key]
        tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}.png")
        _save(array, tmp)
        tmp_paths.append((tmp, final))
        written["normal" if key == "normal_dx" else key] = final
    for tmp, final in tmp_paths:
        tmp.replace(final)
    if layout == "matsynth":
        meta = {
            "category": entry.get("category"),
            "physical_size_m": tile_m,
            "license": entry.get("licence", "CC0-1.0"),
            "normal_convention": "dx" if directx else "gl",
            "source_material": entry["id"],
        }
        (folder / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return written
