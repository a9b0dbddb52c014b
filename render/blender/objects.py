"""The objects of one view and the material each one shows.

A view has a main object (``OBJECT_NAME``) and, in a material-selection scene, more objects
(``SCENE_OBJECT_PREFIX`` + index). Every object is new per view, sits on a cached mesh and
links its material in an object-linked slot, so the cached mesh is never edited and several
objects may share one mesh with different materials. ``add_scene_objects`` places a
selection scene's objects (metres, degrees, scale), gives each distinct material entry its
material-index pass value (1..K, the main material first) and returns the bounding-box
corners the camera frames (``render.blender.scene.frame_scene``) and the per-object records
of the view's meta. The meshes and materials come from ``render.blender.store``.
"""

from __future__ import annotations

import math

import bpy
import numpy as np
from mathutils import Matrix, Vector

from assets.units import UNIT_M
from phieat.schema import hash_obj
from render.blender.store import DatablockStore

OBJECT_NAME = "phieat-object"
SCENE_OBJECT_PREFIX = "phieat-scene-"


def clear_objects() -> None:
    """Remove the main object and a selection scene's extra objects (cached data stays)."""
    clear_scene_objects()
    obj = bpy.data.objects.get(OBJECT_NAME)
    if obj is not None:
        bpy.data.objects.remove(obj)


def clear_scene_objects() -> None:
    """Remove the extra objects of a selection scene (their materials stay cached)."""
    for obj in [o for o in bpy.data.objects if o.name.startswith(SCENE_OBJECT_PREFIX)]:
        bpy.data.objects.remove(obj)


def add_object(
    scene: bpy.types.Scene, name: str, mesh: bpy.types.Mesh, material: bpy.types.Material
) -> bpy.types.Object:
    """A new object on ``mesh`` with ``material`` in an object-linked slot, in ``scene``."""
    obj = bpy.data.objects.new(name, mesh)
    # Object-linked slot: several objects may share a cached mesh with other materials.
    obj.material_slots[0].link = "OBJECT"
    obj.material_slots[0].material = material
    scene.collection.objects.link(obj)
    return obj


def add_scene_objects(
    scene: bpy.types.Scene,
    store: DatablockStore,
    record: dict,
    main: bpy.types.Object,
    main_material: bpy.types.Material,
    job: dict,
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Build the extra objects of a selection scene; return the corners of every object's
    bounding box in world space before the light-rotation spin (``(8 * n, 3)``, scene
    units), the material entries of indices 1..K and per-object records for the meta."""
    rotation = float(job.get("light_rotation", 0.0))
    by_hash = {hash_obj(job["material"]): main_material}
    entries = [job["material"]]
    corners: list[np.ndarray] = []
    records = []

    corners.append(_place(main, record, "scene", rotation))
    records.append(object_record(job["material"], job["mesh"], record, 1))
    for i, item in enumerate(record.get("objects") or []):
        where = f"scene.objects[{i}]"
        if not isinstance(item, dict) or "material" not in item or "mesh" not in item:
            raise ValueError(f"{where} must have 'material' and 'mesh' entries")
        key = hash_obj(item["material"])
        material = by_hash.get(key)
        if material is None:
            material = store.material(item["material"])
            entries.append(item["material"])
            material.pass_index = len(entries)
            by_hash[key] = material
        mesh = store.mesh(item["mesh"])
        obj = add_object(scene, f"{SCENE_OBJECT_PREFIX}{i:03d}", mesh, material)
        corners.append(_place(obj, item, where, rotation))
        records.append(object_record(item["material"], item["mesh"], item, material.pass_index))
    return np.concatenate(corners), entries, records


def _place(obj: bpy.types.Object, record: dict, where: str, rotation: float) -> np.ndarray:
    """Move, turn and scale ``obj`` as ``record`` says; return its bounding-box corners."""
    loc = record.get("location", [0.0, 0.0, 0.0])
    scale = float(record.get("scale", 1.0))
    if len(loc) != 3 or not scale > 0:
        raise ValueError(f"{where}: location must be [x, y, z] and scale > 0")
    location = np.array([float(c) / UNIT_M for c in loc])
    rot_z = math.radians(float(record.get("rotation_z", 0.0)))
    # The same light-rotation trick as the camera: spin the objects by -rotation.
    spin = Matrix.Rotation(-math.radians(rotation), 3, "Z")
    obj.location = spin @ Vector(location.tolist())
    obj.rotation_euler = (0.0, 0.0, rot_z - math.radians(rotation))
    obj.scale = (scale, scale, scale)
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float64)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    lo, hi = co.min(0), co.max(0)
    box = np.array([[(lo, hi)[b >> k & 1][k] for k in range(3)] for b in range(8)])
    turn = np.array(Matrix.Rotation(rot_z, 3, "Z"))
    return location + (scale * box) @ turn.T


def object_record(material: dict, mesh: dict, placement: dict, index: int) -> dict:
    """One object of a selection scene as the view's meta lists it."""
    record = {
        "material_id": str(material.get("id")),
        "mesh_id": str(mesh.get("id")),
        "matid": int(index),
        "location": [float(c) for c in placement.get("location", [0.0, 0.0, 0.0])],
        "rotation_z": float(placement.get("rotation_z", 0.0)),
        "scale": float(placement.get("scale", 1.0)),
    }
    if "colour_match" in material:
        record["colour_match"] = material["colour_match"]
    return record
