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

Where the parts live: ``scene`` (Cycles settings, device, camera), ``store`` (the cached
meshes, materials and worlds), ``objects`` (the objects of a view and their materials),
``output`` (passes, background, encoding; ``RenderedView``), ``checks`` (images that did not
load, renders that must not be published) and ``process`` (silencing C output, giving heap
back). This module ties them together per view and between shards.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import bpy
import numpy as np

from render.blender import caches, lights, meshes, objects, output, scene
from render.blender.checks import check_images, image_problem
from render.blender.output import BACKGROUND_MODES, RenderedView
from render.blender.process import release_heap, silenced
from render.blender.store import DatablockStore
from render.errors import MaterialError, RenderError

__all__ = ["BlenderSession", "RenderedView", "image_problem"]

logger = logging.getLogger("phieat.render")


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
        self._store = DatablockStore(self.cache_mb, mesh_cache_dir)
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
                self._store.base_dirs[key] = Path(value)

    def set_threads(self, threads: int) -> None:
        """Render the next views with ``threads`` Cycles threads. The bytes do not depend on
        the count (each pixel's samples are summed in order by one thread; the denoiser runs
        on the finished buffers), so a pool may widen an actor for the end of a build."""
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads)

    def cache_stats(self) -> dict[str, dict[str, float]]:
        """Hits, misses, evictions, items and approximate MB of every cache; ``mesh_disk``:
        meshes loaded from / missing in / written to the machine's disk cache."""
        return self._store.stats()

    # ------------------------------------------------------------------ scene setup

    def _init_scene(self) -> None:
        self.scene = bpy.context.scene
        scene.setup_scene(self.scene, self.threads, self.device)
        self.camera = scene.add_camera(self.scene)

    def _ensure_scene(self) -> None:
        """Re-create the scene if something reset Blender's data (another session, a test)."""
        try:
            valid = bool(self.scene.name) and bool(self.camera.name)
            valid = valid and bpy.context.scene == self.scene
        except ReferenceError:
            valid = False
        if not valid:
            logger.info("Blender data was reset outside this session: rebuilding its scene")
            for cache in self._store.all_caches():
                cache.clear(remove=False)
            self._light_key = None
            self._init_scene()
        elif self.scene.camera != self.camera:
            self.scene.camera = self.camera
            self._light_key = None

    def _set_light(self, light_entry: dict) -> None:
        key, world = self._store.world(light_entry)
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
        self._store.trim(self._light_key)

    # ------------------------------------------------------------------ per view

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
            objects.clear_objects()
            self._trim_caches()
            self._store.view_materials = set()
            material = self._store.material(material_entry)
            material.pass_index = int(job.get("material_index", 1))
            try:
                mesh = self._store.mesh(mesh_entry)
                obj = objects.add_object(self.scene, objects.OBJECT_NAME, mesh, material)
                radius = meshes.bounding_radius(mesh)
                rotation = float(job.get("light_rotation", 0.0))
                strength = float(job.get("light_strength", 1.0))
                if not strength > 0:
                    raise ValueError(f"light_strength must be > 0, got {strength}")
                record = job.get("scene")
                if record is None:
                    obj.rotation_euler = (0.0, 0.0, -math.radians(rotation))
                    camera = scene.place_camera(
                        self.camera, job.get("camera") or {}, radius, rotation
                    )
                else:
                    if not isinstance(record, dict):
                        raise ValueError("scene must be a dict with an 'objects' list")
                    material.pass_index = 1
                    corners, scene_entries, scene_records = objects.add_scene_objects(
                        self.scene, self._store, record, obj, material, job
                    )
                    camera = scene.frame_scene(
                        self.camera, job.get("camera") or {}, corners, rotation
                    )
                self._set_light(light_entry)
                scene.configure(self.scene, render, seed, self.threads)
                try:
                    check_images(self.scene, material_id)
                except (MaterialError, RenderError):
                    # A texture or HDRI that stopped loading: build them again next time.
                    self._store.discard_view_materials()
                    if self._light_key is not None:
                        self.scene.world = None
                        self._store.world_cache.discard(self._light_key)
                        self._light_key = None
                    raise
                # Exposure is applied to the linear result (rendering is linear in light
                # strength); the clamp is scaled so it acts as if the light were scaled.
                self.scene.cycles.sample_clamp_indirect = scene.CLAMP_INDIRECT / strength
            except (meshes.MeshBuildError, lights.LightBuildError, ValueError) as exc:
                raise RenderError(material_id, str(exc)) from exc
            t_engine = time.perf_counter()
            try:
                bpy.ops.render.render()
            except RuntimeError as exc:
                raise RenderError(material_id, f"Cycles failed: {exc}") from exc
            engine_time = time.perf_counter() - t_engine
            passes = output.read_render_passes(self.scene, self._tmp)
            rgb, alpha = output.composite(passes, strength, background, mode, seed)
            problem = image_problem(rgb)
            if problem is not None:
                raise RenderError(material_id, f"{problem}; the view is not published")
            try:
                image = output.encode(self.scene, rgb.astype(np.float32), render, self._tmp)
            except ValueError as exc:
                raise RenderError(material_id, str(exc)) from exc
        mask = matid = None
        if "mask" in wanted:
            mask = output.png(np.round(alpha * 255).astype(np.uint8))
        if "matid" in wanted:
            index = passes["Material Index.X"]
            # Cycles writes the index of one sample per pixel (not an average).
            ids = np.where(alpha > 0.0, np.rint(index), 0)
            matid = output.png(ids.astype(np.uint16))
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
            "threads": int(self.scene.render.threads),
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
            objects.clear_objects()
            lights.clear_rig()
            self._light_key = None
            if keep_caches and self.cache_mb > 0:
                self._trim_caches()
            else:
                lights.setup_light(
                    self.scene, {"kind": "color", "params": {"color": [0, 0, 0]}}, 0, 1
                )
                for cache in self._store.all_caches():
                    cache.clear()
            self._release_foreign()
            lights.release_images()
            bpy.data.orphans_purge(do_local_ids=True, do_linked_ids=True, do_recursive=True)
        release_heap()

    def _release_foreign(self) -> None:
        """Let the purge take kept datablocks that are not this session's (another session
        in this process kept them): only what this session's caches hold survives."""
        held = set().union(*(cache.pointers() for cache in self._store.all_caches()))
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
