"""A long-lived Blender (bpy + Cycles) process that renders view jobs.

Usage (inside a worker process; importing this module imports bpy)::

    from render.blender.session import BlenderSession
    session = BlenderSession(threads=2)
    view = session.render_view(job)      # job: the view-job dict of the planner
    open("view0.jpg", "wb").write(view.image)
    session.reset()                      # between shards: clear the scene, purge orphans
    session.cache_stats()                # hits / misses of the caches below

How a view is made: the mesh is built at real size and centred, the material and light come
from their catalog entries, and Cycles renders with a transparent film and the Environment
and Material Index passes. The passes are read back from an uncompressed EXR; the visible
background (HDRI, blurred HDRI, plain or random colour) is composited in linear light under
the object's alpha, then Blender's colour management (Standard or AgX view transform)
encodes the final image. The mask is the object's alpha, the material-index image the
Material Index pass. Same job and seed give identical bytes on CPU, whatever the session
rendered before.

Caches: meshes, materials and worlds are built once and kept across shards, least recently
used out first, within ``cache_mb`` (approximate MB; ``PHIEAT_BLENDER_CACHE_MB``, default
1024; 0 frees everything at every ``reset()`` as shards used to). A mesh is keyed by its
geometry (ID, kind, parameters, size, file), a material by its whole catalog entry (and the
size and time of its texture files), a world by its light entry. Generated meshes that take a
while to build (deformed cylinders: up to 1 s) are also written to a per-machine folder
(``mesh_cache_dir``; ``PHIEAT_MESH_CACHE_DIR``, default under the system's temporary folder,
``off`` for none), so each is built once per machine. A cached datablock is never edited by
a view: objects are new per view, with the material in an object-linked slot and their own
transforms, so a view gives the same bytes from a cache as from a fresh build (tests render
both and compare). ``reset()`` removes the objects and the light rig and purges orphans;
``reset(keep_caches=False)`` also drops every cached datablock.

Nothing wrong is published: a texture map or HDRI that did not load (Blender would render
it magenta) raises ``MaterialError`` / ``RenderError`` before Cycles starts, and a render
that is all black, one flat colour or holds NaN raises ``RenderError`` before it is
encoded; the shard writer records either in ``failures.jsonl`` with the reason.

A *material-selection scene* is a view job with a ``scene`` record: the main material and
mesh plus more objects, all in one image::

    job["scene"] = {
        "location": [0.0, 0.0, 0.0], "rotation_z": 0.0, "scale": 1.0,   # the main object
        "objects": [{"material": <material entry>, "mesh": <mesh entry>,
                     "location": [x, y, z], "rotation_z": 30.0, "scale": 0.8}, ...],
    }

Locations are metres, ``rotation_z`` degrees. The material-index pass is per material, not
per object: index 0 is background and 1..K are the distinct material entries in order (the
main material first), so one material on two objects shares an index and a material whose
parameters were overridden gets its own. The view meta lists them as ``matid_materials``
(``matid_materials[k - 1]`` is the ID of index ``k``). The camera looks at the centre of
the objects' bounding boxes from ``camera.distance`` times their joint radius, moved back
until every box corner is inside the frame.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

from assets.catalog import asset_path
from assets.units import UNIT_M
from phieat.schema import hash_obj
from render.blender import caches, lights, materials, meshes
from render.blender.exr import read_passes
from render.errors import MaterialError, RenderError

logger = logging.getLogger("phieat.render")

OBJECT_NAME = "phieat-object"
SCENE_OBJECT_PREFIX = "phieat-scene-"
CAMERA_NAME = "phieat-camera"
OUTPUT_IMAGE = "phieat-output"
BACKGROUND_MODES = ("hdri", "plain", "random", "blur")
IMAGE_FORMATS = ("jpg", "png", "png16", "exr")
VIEW_TRANSFORMS = ("Standard", "AgX")
SENSOR_MM = 36.0
CLAMP_INDIRECT = 10.0
# Selection scenes: the objects' bounding boxes fill at most this fraction of the frame.
FRAME_FILL = 0.94
# The image check before a view is encoded (linear values): a render whose brightest value
# stays under BLACK_LEVEL (about half an 8-bit sRGB step) is black, one whose every channel
# varies by at most FLAT_SPREAD over the image (after clipping to 0..1) is one flat colour.
BLACK_LEVEL = 1.5e-4
FLAT_SPREAD = 1e-3


@dataclass
class RenderedView:
    """One rendered view: encoded image bytes, optional mask / material-index PNGs, metadata."""

    image: bytes
    mask: bytes | None
    matid: bytes | None
    meta: dict = field(default_factory=dict)


@contextlib.contextmanager
def silenced(active: bool) -> Iterator[None]:
    """Redirect the process's stdout/stderr file descriptors (Cycles prints from C)."""
    if not active:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def image_problem(rgb: np.ndarray) -> str | None:
    """Why a linear (H, W, 3) render must not be published, or ``None`` if it looks like one.

    Cheap (a few passes over the pixels): NaN or infinite values, an all-black image (a light
    of zero strength, an exposure gone wrong) and an image of one flat colour (a camera
    inside the object, an overexposed frame) are failures, never samples.
    """
    finite = np.isfinite(rgb)
    if not finite.all():
        bad = int((~finite).any(axis=-1).sum())
        return f"the render has NaN or infinite values in {bad} of {rgb.shape[0] * rgb.shape[1]} pixels"
    if float(rgb.max(initial=0.0)) <= BLACK_LEVEL:
        return "the render is all black"
    clipped = np.clip(rgb, 0.0, 1.0)
    spread = float((clipped.max(axis=(0, 1)) - clipped.min(axis=(0, 1))).max())
    if spread <= FLAT_SPREAD:
        colour = ", ".join(f"{c:.3f}" for c in clipped.reshape(-1, 3)[0])
        return f"the render is one flat colour (linear {colour}): no object is visible"
    return None


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) array with edge padding."""
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, k in enumerate(kernel):
            sl = [slice(None)] * out.ndim
            sl[axis] = slice(i, i + out.shape[axis])
            acc += k * padded[tuple(sl)]
        out = acc
    return out.astype(np.float32)


class BlenderSession:
    """One bpy scene reused for many views (persistent data keeps the per-render cost low)."""

    def __init__(
        self,
        threads: int = 1,
        device: str = "CPU",
        quiet: bool = True,
        cache_mb: float | None = None,
        mesh_cache_dir: str | Path | bool = True,
    ) -> None:
        if int(threads) < 1:
            raise ValueError(
                f"threads must be >= 1 (Cycles runs with a fixed count), got {threads}"
            )
        self.threads = int(threads)
        self.device = device.upper()
        self.quiet = quiet
        # Passes go through a small EXR per view: keep it in memory-backed storage if any.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._tmp = Path(tempfile.mkdtemp(prefix="phieat-blender-", dir=shm))
        # Removed when the session is garbage-collected or the process exits normally.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        if cache_mb is None:
            cache_mb = float(os.environ.get("PHIEAT_BLENDER_CACHE_MB", caches.DEFAULT_CACHE_MB))
        self.cache_mb = float(cache_mb)
        # cache_mb 0: caches live for one shard only (unbounded within it), as before.
        keep = self.cache_mb > 0
        share = caches.CACHE_SHARES
        self._meshes = caches.DatablockCache(
            "meshes", share["meshes"] * self.cache_mb if keep else math.inf, _remove_mesh
        )
        self._materials = caches.DatablockCache(
            "materials",
            share["materials"] * self.cache_mb if keep else math.inf,
            _remove_material,
        )
        self._worlds = caches.DatablockCache(
            "worlds", share["worlds"] * self.cache_mb if keep else math.inf, _remove_world
        )
        if mesh_cache_dir is True:
            folder = caches.default_disk_dir()
        elif mesh_cache_dir is False or mesh_cache_dir is None:
            folder = None
        else:
            folder = Path(mesh_cache_dir)
        self._mesh_disk = caches.MeshDiskCache(folder) if folder is not None else None
        self._base_dirs: dict[str, Path] = {}
        # Cache keys of the materials the view being rendered uses.
        self._view_materials: set[str] = set()
        self._light_key: str | None = None
        with silenced(self.quiet):
            bpy.ops.wm.read_factory_settings(use_empty=True)
        self._init_scene()

    # ------------------------------------------------------------------ properties

    @property
    def blender_version(self) -> str:
        return bpy.app.version_string

    @staticmethod
    def rss_mb() -> float:
        """Resident memory of this process in MiB (from /proc, or ru_maxrss elsewhere)."""
        try:
            with open("/proc/self/statm") as fh:
                pages = int(fh.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def set_base_dirs(
        self,
        materials_dir: Path | None = None,
        meshes_dir: Path | None = None,
        lights_dir: Path | None = None,
    ) -> None:
        """Folders that relative catalog paths (maps, mesh files, HDRIs) are resolved against."""
        for key, value in (
            ("materials", materials_dir),
            ("meshes", meshes_dir),
            ("lights", lights_dir),
        ):
            if value is not None:
                self._base_dirs[key] = Path(value)

    # ------------------------------------------------------------------ scene setup

    def _init_scene(self) -> None:
        scene = bpy.context.scene
        self.scene = scene
        scene.render.engine = "CYCLES"
        scene.render.threads_mode = "FIXED"
        scene.render.threads = self.threads
        scene.render.use_persistent_data = True
        scene.render.film_transparent = True
        scene.render.use_compositing = False
        scene.render.use_sequencer = False
        scene.render.resolution_percentage = 100
        scene.display_settings.display_device = "sRGB"
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0
        cycles = scene.cycles
        cycles.use_adaptive_sampling = False
        cycles.use_animated_seed = False
        cycles.sample_clamp_indirect = CLAMP_INDIRECT
        cycles.caustics_reflective = False
        cycles.caustics_refractive = False
        self._set_device()
        layer = scene.view_layers[0]
        layer.use_pass_combined = True
        layer.use_pass_environment = True
        layer.use_pass_material_index = True
        layer.use_pass_z = False
        cam_data = bpy.data.cameras.new(CAMERA_NAME)
        cam_data.sensor_fit = "HORIZONTAL"
        cam_data.sensor_width = SENSOR_MM
        camera = bpy.data.objects.new(CAMERA_NAME, cam_data)
        scene.collection.objects.link(camera)
        scene.camera = camera
        self.camera = camera

    def _ensure_scene(self) -> None:
        """Re-create the scene if something reset Blender's data (another session, a test)."""
        try:
            valid = bool(self.scene.name) and bool(self.camera.name)
            valid = valid and bpy.context.scene == self.scene
        except ReferenceError:
            valid = False
        if not valid:
            logger.info("Blender data was reset outside this session: rebuilding its scene")
            for cache in self._caches():
                cache.clear(remove=False)
            self._light_key = None
            self._init_scene()
        elif self.scene.camera != self.camera:
            self.scene.camera = self.camera
            self._light_key = None

    def _set_device(self) -> None:
        cycles = self.scene.cycles
        if self.device == "CPU":
            cycles.device = "CPU"
            return
        prefs = bpy.context.preferences.addons["cycles"].preferences
        kinds = (
            ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL") if self.device == "GPU" else (self.device,)
        )
        for kind in kinds:
            try:
                prefs.compute_device_type = kind
            except TypeError:
                continue
            prefs.get_devices()
            gpus = [d for d in prefs.devices if d.type == kind]
            if gpus:
                for dev in prefs.devices:
                    dev.use = dev.type == kind
                cycles.device = "GPU"
                logger.info("Cycles renders on %s: %s", kind, ", ".join(d.name for d in gpus))
                return
        raise RenderError("-", f"device {self.device!r} requested but no such GPU is visible")

    # ------------------------------------------------------------------ per view

    def _clear_object(self) -> None:
        """Remove the main object and a selection scene's extra objects (cached data stays)."""
        self._clear_scene_objects()
        obj = bpy.data.objects.get(OBJECT_NAME)
        if obj is not None:
            bpy.data.objects.remove(obj)

    def _object(
        self, mesh_entry: dict, material: bpy.types.Material
    ) -> tuple[bpy.types.Object, float]:
        """A new main object on the cached mesh with ``material`` in an object-linked slot
        (the cached mesh itself is never edited)."""
        mesh = self._mesh(mesh_entry)
        obj = bpy.data.objects.new(OBJECT_NAME, mesh)
        obj.material_slots[0].link = "OBJECT"
        obj.material_slots[0].material = material
        self.scene.collection.objects.link(obj)
        return obj, meshes.bounding_radius(mesh)

    def _clear_scene_objects(self) -> None:
        """Remove the extra objects of a selection scene (their materials stay cached)."""
        for obj in [o for o in bpy.data.objects if o.name.startswith(SCENE_OBJECT_PREFIX)]:
            bpy.data.objects.remove(obj)

    def _caches(self) -> tuple[caches.DatablockCache, ...]:
        return (self._meshes, self._materials, self._worlds)

    def _mesh(self, mesh_entry: dict) -> bpy.types.Mesh:
        """The mesh of a catalog entry: from the session's cache, the machine's disk cache,
        or built (and then kept in both)."""
        base_dir = self._base_dirs.get("meshes")
        geometry = {k: mesh_entry.get(k) for k in ("id", "kind", "params", "size_m", "path")}
        if mesh_entry.get("kind") == "file" and mesh_entry.get("path"):
            try:
                geometry["file"] = caches.file_signature(asset_path(mesh_entry["path"], base_dir))
            except ValueError:
                geometry["file"] = None  # build_mesh reports the bad path
            geometry["base_dir"] = str(base_dir) if base_dir else None
        key = hash_obj(geometry)
        mesh = self._meshes.get(key)
        if mesh is not None:
            return mesh
        mesh = self._mesh_disk.load(mesh_entry) if self._mesh_disk is not None else None
        if mesh is not None:
            mesh.name = f"phieat-{mesh_entry.get('id', '?')}"
        else:
            started = time.perf_counter()
            mesh = meshes.build_mesh(mesh_entry, base_dir)
            took = time.perf_counter() - started
            if self._mesh_disk is not None and took >= caches.DISK_MIN_BUILD_S:
                self._mesh_disk.store(mesh_entry, mesh)
        # One empty slot: objects link their own material to it, the mesh is never edited.
        mesh.materials.append(None)
        self._meshes.put(key, mesh, caches.mesh_mb(mesh))
        return mesh

    def _material_key(self, entry: dict) -> str:
        base_dir = self._base_dirs.get("materials")
        key: dict = {"entry": entry, "base_dir": str(base_dir) if base_dir else None}
        maps = entry.get("maps")
        if isinstance(maps, dict):
            # A texture file replaced on disk between shards is loaded again.
            files = {}
            for name, ref in sorted(maps.items()):
                try:
                    files[name] = caches.file_signature(asset_path(str(ref), base_dir))
                except (ValueError, TypeError):
                    files[name] = None  # the texture-set builder reports the bad path
            key["files"] = files
        return hash_obj(key)

    def _material(self, entry: dict) -> bpy.types.Material:
        """The material of a catalog entry, built once and kept: the views of one material
        share the datablock (building a node graph costs 2-130 ms in Python by family)."""
        key = self._material_key(entry)
        material = self._materials.get(key)
        if material is None:
            material = materials.build_material(entry, self._base_dirs.get("materials"))
            size = 0.05 + caches.images_mb(material.node_tree)
            self._materials.put(key, material, size)
        self._view_materials.add(key)
        return material

    def _world(self, light_entry: dict) -> tuple[str, bpy.types.World]:
        """The world of a light entry (rotation 0, strength 1: views turn the camera and
        scale the result instead), from the cache or built."""
        base_dir = self._base_dirs.get("lights")
        key_obj: dict = {"entry": light_entry, "base_dir": str(base_dir) if base_dir else None}
        path = light_entry.get("path")
        if light_entry.get("kind") == "hdri" and path and not str(path).startswith("bpy:"):
            try:
                key_obj["file"] = caches.file_signature(lights.resolve_hdri_path(path, base_dir))
            except lights.LightBuildError:
                key_obj["file"] = None  # build_world reports it
        key = hash_obj(key_obj)
        world = self._worlds.get(key)
        if world is None:
            world = lights.build_world(light_entry, f"phieat-world-{key[:12]}", 0.0, 1.0, base_dir)
            self._worlds.put(key, world, 0.05 + caches.images_mb(world.node_tree))
        return key, world

    def _set_light(self, light_entry: dict) -> None:
        key, world = self._world(light_entry)
        if key == self._light_key and self.scene.world == world:
            return
        lights.clear_rig()
        if self.scene.world != world:
            self.scene.world = world
        lights.add_rig(self.scene, light_entry, 0.0, 1.0)
        self._light_key = key

    def _trim_caches(self) -> None:
        """Evict least recently used datablocks beyond the bounds (no object uses them now;
        the scene's world is kept)."""
        self._meshes.trim()
        self._materials.trim()
        self._worlds.trim(keep={self._light_key} if self._light_key else None)

    def cache_stats(self) -> dict[str, dict[str, float]]:
        """Hits, misses, evictions, items and approximate MB of every cache; ``mesh_disk``:
        meshes loaded from / missing in / written to the machine's disk cache."""
        stats: dict[str, dict[str, float]] = {}
        for cache in self._caches():
            stats[cache.name] = {
                **cache.stats.as_dict(),
                "items": len(cache),
                "mb": round(cache.mb, 1),
            }
        if self._mesh_disk is not None:
            stats["mesh_disk"] = {
                **self._mesh_disk.stats.as_dict(),
                "writes": self._mesh_disk.writes,
            }
        return stats

    def _scene_objects(
        self, scene: dict, main: bpy.types.Object, main_material: bpy.types.Material, job: dict
    ) -> tuple[np.ndarray, list[dict], list[dict]]:
        """Build the extra objects of a selection scene; return the corners of every object's
        bounding box in world space before the light-rotation spin (``(8 * n, 3)``, scene
        units), the material entries of indices 1..K and per-object records for the meta."""
        rotation = float(job.get("light_rotation", 0.0))
        by_hash = {hash_obj(job["material"]): main_material}
        entries = [job["material"]]
        corners: list[np.ndarray] = []
        records = []

        def place(obj: bpy.types.Object, record: dict, where: str) -> None:
            from mathutils import Matrix, Vector

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
            corners.append(location + (scale * box) @ turn.T)

        place(main, scene, "scene")
        records.append(self._object_record(job["material"], job["mesh"], scene, 1))
        for i, item in enumerate(scene.get("objects") or []):
            where = f"scene.objects[{i}]"
            if not isinstance(item, dict) or "material" not in item or "mesh" not in item:
                raise ValueError(f"{where} must have 'material' and 'mesh' entries")
            key = hash_obj(item["material"])
            material = by_hash.get(key)
            if material is None:
                material = self._material(item["material"])
                entries.append(item["material"])
                material.pass_index = len(entries)
                by_hash[key] = material
            mesh = self._mesh(item["mesh"])
            obj = bpy.data.objects.new(f"{SCENE_OBJECT_PREFIX}{i:03d}", mesh)
            # Object-linked slot: several objects may share a cached mesh with other materials.
            obj.material_slots[0].link = "OBJECT"
            obj.material_slots[0].material = material
            self.scene.collection.objects.link(obj)
            place(obj, item, where)
            records.append(
                self._object_record(item["material"], item["mesh"], item, material.pass_index)
            )
        return np.concatenate(corners), entries, records

    @staticmethod
    def _object_record(material: dict, mesh: dict, placement: dict, index: int) -> dict:
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

    def _frame_scene(self, cam: dict, corners: np.ndarray, light_rotation: float) -> dict:
        """Aim the camera at the centre of the objects' bounding boxes, ``distance`` times
        their joint radius away, and back off until every box corner is inside the frame."""
        from mathutils import Matrix

        lo, hi = corners.min(0), corners.max(0)
        target = (lo + hi) / 2
        radius = float(np.linalg.norm(corners - target, axis=1).max())
        spin = np.array(Matrix.Rotation(-math.radians(light_rotation), 3, "Z"))
        world = corners @ spin.T
        factor = float(cam.get("distance", 3.0))
        limit = FRAME_FILL * SENSOR_MM / 2 / float(cam.get("lens_mm", 50.0))
        for _ in range(80):
            record = self._place_camera({**cam, "distance": factor}, radius, light_rotation, target)
            rot = np.array(self.camera.rotation_euler.to_matrix())
            local = (world - np.array(self.camera.location)) @ rot
            depth = -local[:, 2]
            if (depth > 0).all() and (np.abs(local[:, :2]).max(1) <= depth * limit).all():
                break
            factor *= 1.04
        record["scene_radius_m"] = round(radius * UNIT_M, 6)
        return record

    def _place_camera(
        self, cam: dict, radius: float, light_rotation: float, target: object = None
    ) -> dict:
        from mathutils import Matrix, Vector

        distance = float(cam.get("distance", 3.0)) * radius
        elevation = math.radians(float(cam.get("elevation", 20.0)))
        azimuth = math.radians(float(cam.get("azimuth", 0.0)))
        lens = float(cam.get("lens_mm", 50.0))
        location = Vector(
            (
                distance * math.cos(elevation) * math.sin(azimuth),
                -distance * math.cos(elevation) * math.cos(azimuth),
                distance * math.sin(elevation),
            )
        )
        # Rotating the light by +r about Z is the same picture as rotating object and camera
        # by -r: the world stays untouched, and a world update costs Cycles ~1 s (it rebuilds
        # the environment importance map), while moving objects is free.
        spin = Matrix.Rotation(-math.radians(light_rotation), 3, "Z")
        if target is None:
            self.camera.location = spin @ location
            self.camera.rotation_euler = (-(spin @ location)).to_track_quat("-Z", "Y").to_euler()
        else:
            # A selection scene: look at the objects' centre instead of the origin.
            location = location + Vector([float(c) for c in target])
            self.camera.location = spin @ location
            aim = spin @ Vector([float(c) for c in target]) - self.camera.location
            self.camera.rotation_euler = aim.to_track_quat("-Z", "Y").to_euler()
        self.camera.data.lens = lens
        self.camera.data.clip_start = max(1e-4, distance - 2.0 * radius) * 0.5
        self.camera.data.clip_end = distance + 4.0 * radius
        record = {
            "distance": float(cam.get("distance", 3.0)),
            "elevation": math.degrees(elevation),
            "azimuth": math.degrees(azimuth),
            "lens_mm": lens,
            "location_m": [round(float(c) * UNIT_M, 6) for c in location],
        }
        if target is not None:
            record["distance"] = round(record["distance"], 4)
            record["target_m"] = [round(float(c) * UNIT_M, 6) for c in target]
        return record

    def _configure(self, render: dict, seed: int) -> None:
        scene = self.scene
        res = int(render.get("resolution", 64))
        scene.render.resolution_x = res
        scene.render.resolution_y = res
        cycles = scene.cycles
        cycles.samples = int(render.get("samples", 8))
        cycles.use_denoising = bool(render.get("denoise", False))
        bounces = int(render.get("bounces", 4))
        cycles.max_bounces = bounces
        cycles.diffuse_bounces = min(bounces, 3)
        cycles.glossy_bounces = bounces
        cycles.transmission_bounces = bounces
        cycles.transparent_max_bounces = max(bounces, 8)
        cycles.seed = int(seed) % 2**31
        transform = render.get("view_transform", "Standard")
        if transform not in VIEW_TRANSFORMS:
            raise ValueError(f"render.view_transform {transform!r} is not one of {VIEW_TRANSFORMS}")
        scene.view_settings.view_transform = transform
        scene.render.threads = self.threads

    def _encode(self, rgb: np.ndarray, render: dict) -> bytes:
        """Encode a linear (H, W, 3) image with the scene's colour management."""
        fmt = render.get("image_format", "jpg")
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"render.image_format {fmt!r} is not one of {IMAGE_FORMATS}")
        h, w, _ = rgb.shape
        image = bpy.data.images.get(OUTPUT_IMAGE)
        if image is None or tuple(image.size) != (w, h):
            if image is not None:
                bpy.data.images.remove(image)
            image = bpy.data.images.new(OUTPUT_IMAGE, w, h, alpha=True, float_buffer=True)
            image.colorspace_settings.name = "Linear Rec.709"
        rgba = np.concatenate([rgb, np.ones((h, w, 1), np.float32)], axis=2)
        image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())
        settings = self.scene.render.image_settings
        settings.media_type = "IMAGE"
        settings.color_mode = "RGB"
        if fmt == "jpg":
            settings.file_format = "JPEG"
            settings.quality = int(render.get("jpeg_quality", 92))
            suffix = ".jpg"
        elif fmt in ("png", "png16"):
            settings.file_format = "PNG"
            settings.color_depth = "16" if fmt == "png16" else "8"
            settings.compression = 15
            suffix = ".png"
        else:
            settings.file_format = "OPEN_EXR"
            settings.color_depth = "16"
            settings.exr_codec = "ZIP"
            suffix = ".exr"
        self._tmp.mkdir(parents=True, exist_ok=True)
        path = self._tmp / f"view{suffix}"
        image.save_render(str(path), scene=self.scene)
        data = path.read_bytes()
        path.unlink()  # a killed worker leaves nothing behind in /dev/shm
        return data

    def _check_images(self, material_id: str) -> None:
        """Refuse to render when an image the scene uses holds no pixels: Blender would draw
        a missing or undecodable texture map or HDRI in magenta and carry on."""
        for obj in self.scene.objects:
            for slot in obj.material_slots:
                mat = slot.material
                if mat is None or mat.node_tree is None:
                    continue
                for path in _unloaded_images(mat.node_tree):
                    raise MaterialError(
                        material_id,
                        f"texture {path} of material {mat.name!r} did not load "
                        "(missing or undecodable file)",
                    )
        world = self.scene.world
        if world is not None and world.node_tree is not None:
            for path in _unloaded_images(world.node_tree):
                raise RenderError(
                    material_id, f"HDRI {path} did not load (missing or undecodable file)"
                )

    def _read_passes(self) -> dict[str, np.ndarray]:
        settings = self.scene.render.image_settings
        settings.media_type = "MULTI_LAYER_IMAGE"
        settings.file_format = "OPEN_EXR_MULTILAYER"
        settings.exr_codec = "NONE"
        settings.color_depth = "32"
        self._tmp.mkdir(parents=True, exist_ok=True)
        path = self._tmp / "passes.exr"
        bpy.data.images["Render Result"].save_render(str(path), scene=self.scene)
        raw = read_passes(path)
        path.unlink()
        layer = self.scene.view_layers[0].name
        passes: dict[str, np.ndarray] = {}
        for name, values in raw.items():
            if name.startswith(layer + "."):
                passes[name[len(layer) + 1 :]] = values
        return passes

    def render_view(self, job: dict) -> RenderedView:
        """Render one view job; raise ``MaterialError`` / ``RenderError`` naming the material."""
        t0 = time.perf_counter()
        material_entry = job.get("material") or {}
        material_id = str(material_entry.get("id", "?"))
        try:
            mesh_entry = job["mesh"]
            light_entry = job["light"]
            render = dict(job.get("render") or {})
            seed = int(job["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RenderError(
                material_id, f"view job {job.get('key')!r} is malformed: {exc!r}"
            ) from exc
        wanted = set(render.get("passes") or [])
        unknown = wanted - {"mask", "matid"}
        if unknown:
            raise RenderError(material_id, f"render.passes has unknown entries {sorted(unknown)}")
        background = dict(job.get("background") or {"mode": "hdri"})
        mode = background.get("mode", "hdri")
        if mode not in BACKGROUND_MODES:
            raise RenderError(
                material_id, f"background.mode {mode!r} is not one of {BACKGROUND_MODES}"
            )
        with silenced(self.quiet):
            self._ensure_scene()
            self._clear_object()
            self._trim_caches()
            self._view_materials = set()
            material = self._material(material_entry)
            material.pass_index = int(job.get("material_index", 1))
            try:
                obj, radius = self._object(mesh_entry, material)
                rotation = float(job.get("light_rotation", 0.0))
                strength = float(job.get("light_strength", 1.0))
                if not strength > 0:
                    raise ValueError(f"light_strength must be > 0, got {strength}")
                scene = job.get("scene")
                if scene is None:
                    obj.rotation_euler = (0.0, 0.0, -math.radians(rotation))
                    camera = self._place_camera(job.get("camera") or {}, radius, rotation)
                else:
                    if not isinstance(scene, dict):
                        raise ValueError("scene must be a dict with an 'objects' list")
                    material.pass_index = 1
                    corners, scene_entries, scene_records = self._scene_objects(
                        scene, obj, material, job
                    )
                    camera = self._frame_scene(job.get("camera") or {}, corners, rotation)
                self._set_light(light_entry)
                self._configure(render, seed)
                try:
                    self._check_images(material_id)
                except (MaterialError, RenderError):
                    # A texture or HDRI that stopped loading: build them again next time.
                    for key in self._view_materials:
                        self._materials.discard(key)
                    if self._light_key is not None:
                        self.scene.world = None
                        self._worlds.discard(self._light_key)
                        self._light_key = None
                    raise
                # Exposure is applied to the linear result (rendering is linear in light
                # strength); the clamp is scaled so it acts as if the light were scaled.
                self.scene.cycles.sample_clamp_indirect = CLAMP_INDIRECT / strength
            except (meshes.MeshBuildError, lights.LightBuildError, ValueError) as exc:
                raise RenderError(material_id, str(exc)) from exc
            t_engine = time.perf_counter()
            try:
                bpy.ops.render.render()
            except RuntimeError as exc:
                raise RenderError(material_id, f"Cycles failed: {exc}") from exc
            engine_time = time.perf_counter() - t_engine
            passes = self._read_passes()
            alpha = np.clip(passes["Combined.A"], 0.0, 1.0)
            rgb = strength * np.stack([passes[f"Combined.{c}"] for c in "RGB"], axis=-1)
            env = strength * np.stack([passes[f"Environment.{c}"] for c in "RGB"], axis=-1)
            if mode == "hdri":
                # The Environment pass is already weighted by background coverage.
                rgb = rgb + env
            else:
                if mode == "blur":
                    # Fill the object's hole by normalised convolution, then blur.
                    sigma = float(background.get("sigma", 0.04)) * rgb.shape[1]
                    cover = (1.0 - alpha)[..., None]
                    num = _gaussian_blur(env, sigma)
                    den = _gaussian_blur(cover, sigma)
                    fill = num / np.maximum(den, 1e-4)
                else:
                    color = background.get("color")
                    if color is None:
                        color = np.random.default_rng(seed).uniform(0.05, 0.9, 3).tolist()
                        background["color"] = color
                    fill = np.broadcast_to(np.asarray(color, np.float32)[:3], rgb.shape)
                rgb = rgb + (1.0 - alpha)[..., None] * fill
            problem = image_problem(rgb)
            if problem is not None:
                raise RenderError(material_id, f"{problem}; the view is not published")
            try:
                image = self._encode(rgb.astype(np.float32), render)
            except ValueError as exc:
                raise RenderError(material_id, str(exc)) from exc
        mask = matid = None
        if "mask" in wanted:
            mask = _png(np.round(alpha * 255).astype(np.uint8))
        if "matid" in wanted:
            index = passes["Material Index.X"]
            # Cycles writes the index of one sample per pixel (not an average).
            ids = np.where(alpha > 0.0, np.rint(index), 0)
            matid = _png(ids.astype(np.uint16))
        meta = {
            "mesh_id": str(mesh_entry.get("id")),
            "light_id": str(light_entry.get("id")),
            "light_rotation": float(job.get("light_rotation", 0.0)),
            "light_strength": float(job.get("light_strength", 1.0)),
            "camera": camera,
            "seed": seed,
            "samples": int(self.scene.cycles.samples),
            "view_transform": self.scene.view_settings.view_transform,
            "render_time_s": round(time.perf_counter() - t0, 4),
            "engine_time_s": round(engine_time, 4),
            "view": int(job.get("view", 0)),
            "mesh_size_m": float(mesh_entry.get("size_m", 1.0)),
            "background": background,
            "resolution": int(self.scene.render.resolution_x),
            "denoise": bool(self.scene.cycles.use_denoising),
            "coverage": round(float(alpha.mean()), 4),
        }
        if job.get("scene") is not None:
            meta["matid_materials"] = [str(e.get("id")) for e in scene_entries]
            meta["scene_objects"] = scene_records
        return RenderedView(image=image, mask=mask, matid=matid, meta=meta)

    # ------------------------------------------------------------------ between shards

    def reset(self, keep_caches: bool = True) -> None:
        """Between shards: remove the objects and the light rig, purge orphan datablocks.

        Cached meshes, materials and worlds stay (within ``cache_mb``) unless ``keep_caches``
        is false or ``cache_mb`` is 0: then every one of them is removed too.
        """
        with silenced(self.quiet):
            self._ensure_scene()
            self._clear_object()
            lights.clear_rig()
            self._light_key = None
            if keep_caches and self.cache_mb > 0:
                self._trim_caches()
            else:
                lights.setup_light(
                    self.scene, {"kind": "color", "params": {"color": [0, 0, 0]}}, 0, 1
                )
                for cache in self._caches():
                    cache.clear()
            self._release_foreign()
            lights.release_images()
            bpy.data.orphans_purge(do_local_ids=True, do_linked_ids=True, do_recursive=True)
        _release_heap()

    def _release_foreign(self) -> None:
        """Let the purge take kept datablocks that are not this session's (another session
        in this process kept them): only what this session's caches hold survives."""
        held = set().union(*(cache.pointers() for cache in self._caches()))
        for collection in (bpy.data.meshes, bpy.data.materials, bpy.data.worlds):
            for datablock in collection:
                if datablock.use_fake_user and datablock.as_pointer() not in held:
                    datablock.use_fake_user = False

    def close(self) -> None:
        """Remove the session's temporary folder (the session can still render afterwards)."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> BlenderSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Removers look ``bpy.data`` up at call time: a collection bound earlier dangles after
# ``read_factory_settings`` (Blender replaces its main database) and crashes Blender.
def _remove_mesh(mesh: bpy.types.Mesh) -> None:
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)


def _remove_material(material: bpy.types.Material) -> None:
    bpy.data.materials.remove(material)


def _remove_world(world: bpy.types.World) -> None:
    bpy.data.worlds.remove(world)


def _unloaded_images(tree: bpy.types.NodeTree, seen: set | None = None) -> list[str]:
    """File paths of the images in ``tree`` (and its node groups) that hold no pixels."""
    seen = set() if seen is None else seen
    out = []
    for node in tree.nodes:
        group = getattr(node, "node_tree", None)
        if node.type == "GROUP" and group is not None and group.name not in seen:
            seen.add(group.name)
            out.extend(_unloaded_images(group, seen))
        image = getattr(node, "image", None)
        if image is not None and image.source == "FILE" and not lights.image_loaded(image):
            out.append(image.filepath or image.name)
    return out


def _release_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise; RSS would creep)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        logger.debug("malloc_trim is not available on this libc")


def _png(array: np.ndarray) -> bytes:
    """8-bit (uint8) or 16-bit (uint16) greyscale PNG bytes."""
    buf = BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
