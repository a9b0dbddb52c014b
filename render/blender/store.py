"""The meshes, materials and worlds a session builds from catalog entries, kept across shards.

``DatablockStore`` answers "the datablock of this entry": from its cache when an equal entry
was built before, else built by ``meshes`` / ``materials`` / ``lights`` and kept. It holds
the three ``caches.DatablockCache`` of one session (bounded by ``cache_mb``) and the
machine's ``caches.MeshDiskCache`` for slow generated meshes. Keys are what decides the
result: a mesh's geometry (ID, kind, parameters, size, file), a material's whole catalog
entry plus the size and time of its texture files, a world's light entry plus its HDRI
file, so a file replaced on disk between shards is loaded again.

A cached datablock is never edited by a view (objects are new per view and link their
material in an object slot, see ``render.blender.objects``), so a view gives the same bytes
from the store as from a fresh build.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import bpy

from assets.catalog import asset_path
from phieat.schema import hash_obj
from render.blender import caches, lights, materials, meshes


class DatablockStore:
    """Built datablocks of one session, keyed by the catalog entries they come from."""

    def __init__(self, cache_mb: float, mesh_cache_dir: str | Path | bool | None = True) -> None:
        # cache_mb 0: caches live for one shard only (unbounded within it), as before.
        keep = cache_mb > 0
        share = caches.CACHE_SHARES
        self.mesh_cache = caches.DatablockCache(
            "meshes", share["meshes"] * cache_mb if keep else math.inf, _remove_mesh
        )
        self.material_cache = caches.DatablockCache(
            "materials",
            share["materials"] * cache_mb if keep else math.inf,
            _remove_material,
        )
        self.world_cache = caches.DatablockCache(
            "worlds", share["worlds"] * cache_mb if keep else math.inf, _remove_world
        )
        if mesh_cache_dir is True:
            folder = caches.default_disk_dir()
        elif mesh_cache_dir is False or mesh_cache_dir is None:
            folder = None
        else:
            folder = Path(mesh_cache_dir)
        self.mesh_disk = caches.MeshDiskCache(folder) if folder is not None else None
        # Folders relative catalog paths are resolved against, by catalog kind.
        self.base_dirs: dict[str, Path] = {}
        # Cache keys of the materials the view being rendered uses.
        self.view_materials: set[str] = set()

    def all_caches(self) -> tuple[caches.DatablockCache, ...]:
        return (self.mesh_cache, self.material_cache, self.world_cache)

    def mesh(self, mesh_entry: dict) -> bpy.types.Mesh:
        """The mesh of a catalog entry: from the session's cache, the machine's disk cache,
        or built (and then kept in both)."""
        base_dir = self.base_dirs.get("meshes")
        geometry = {k: mesh_entry.get(k) for k in ("id", "kind", "params", "size_m", "path")}
        if mesh_entry.get("kind") == "file" and mesh_entry.get("path"):
            try:
                geometry["file"] = caches.file_signature(asset_path(mesh_entry["path"], base_dir))
            except ValueError:
                geometry["file"] = None  # build_mesh reports the bad path
            geometry["base_dir"] = str(base_dir) if base_dir else None
        key = hash_obj(geometry)
        mesh = self.mesh_cache.get(key)
        if mesh is not None:
            return mesh
        mesh = self.mesh_disk.load(mesh_entry) if self.mesh_disk is not None else None
        if mesh is not None:
            mesh.name = f"phieat-{mesh_entry.get('id', '?')}"
        else:
            started = time.perf_counter()
            mesh = meshes.build_mesh(mesh_entry, base_dir)
            took = time.perf_counter() - started
            if self.mesh_disk is not None and took >= caches.DISK_MIN_BUILD_S:
                self.mesh_disk.store(mesh_entry, mesh)
        # One empty slot: objects link their own material to it, the mesh is never edited.
        mesh.materials.append(None)
        self.mesh_cache.put(key, mesh, caches.mesh_mb(mesh))
        return mesh

    def material_key(self, entry: dict) -> str:
        base_dir = self.base_dirs.get("materials")
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

    def material(self, entry: dict) -> bpy.types.Material:
        """The material of a catalog entry, built once and kept: the views of one material
        share the datablock (building a node graph costs 2-130 ms in Python by family)."""
        key = self.material_key(entry)
        material = self.material_cache.get(key)
        if material is None:
            material = materials.build_material(entry, self.base_dirs.get("materials"))
            size = 0.05 + caches.images_mb(material.node_tree)
            self.material_cache.put(key, material, size)
        self.view_materials.add(key)
        return material

    def discard_view_materials(self) -> None:
        """Drop the materials the current view uses from the cache (one of their textures
        stopped loading: the next view builds them again)."""
        for key in self.view_materials:
            self.material_cache.discard(key)

    def world(self, light_entry: dict) -> tuple[str, bpy.types.World]:
        """The world of a light entry (rotation 0, strength 1: views turn the camera and
        scale the result instead), from the cache or built."""
        base_dir = self.base_dirs.get("lights")
        key_obj: dict = {"entry": light_entry, "base_dir": str(base_dir) if base_dir else None}
        path = light_entry.get("path")
        if light_entry.get("kind") == "hdri" and path and not str(path).startswith("bpy:"):
            try:
                key_obj["file"] = caches.file_signature(lights.resolve_hdri_path(path, base_dir))
            except lights.LightBuildError:
                key_obj["file"] = None  # build_world reports it
        key = hash_obj(key_obj)
        world = self.world_cache.get(key)
        if world is None:
            world = lights.build_world(light_entry, f"phieat-world-{key[:12]}", 0.0, 1.0, base_dir)
            self.world_cache.put(key, world, 0.05 + caches.images_mb(world.node_tree))
        return key, world

    def trim(self, world_key: str | None) -> None:
        """Evict least recently used datablocks beyond the bounds (no object uses them now;
        the world of ``world_key``, the scene's, is kept)."""
        self.mesh_cache.trim()
        self.material_cache.trim()
        self.world_cache.trim(keep={world_key} if world_key else None)

    def stats(self) -> dict[str, dict[str, float]]:
        """Hits, misses, evictions, items and approximate MB of every cache; ``mesh_disk``:
        meshes loaded from / missing in / written to the machine's disk cache."""
        stats: dict[str, dict[str, float]] = {}
        for cache in self.all_caches():
            stats[cache.name] = {
                **cache.stats.as_dict(),
                "items": len(cache),
                "mb": round(cache.mb, 1),
            }
        if self.mesh_disk is not None:
            stats["mesh_disk"] = {
                **self.mesh_disk.stats.as_dict(),
                "writes": self.mesh_disk.writes,
            }
        return stats


# Removers look ``bpy.data`` up at call time: a collection bound earlier dangles after
# ``read_factory_settings`` (Blender replaces its main database) and crashes Blender.
def _remove_mesh(mesh: bpy.types.Mesh) -> None:
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)


def _remove_material(material: bpy.types.Material) -> None:
    bpy.data.materials.remove(material)


def _remove_world(world: bpy.types.World) -> None:
    bpy.data.worlds.remove(world)
