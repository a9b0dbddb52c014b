"""Caches that outlive a shard: built meshes, materials and worlds kept in one Blender process,
and generated geometry kept on disk per machine.

* ``DatablockCache``: key -> datablock, least recently used first out, bounded by a count and
  an approximate size in MB. Every datablock it holds has a fake user, so Blender's orphan
  purge between shards leaves it alone; evicting one removes it from ``bpy.data``. Hits,
  misses and evictions are counted for ``BlenderSession.cache_stats()``.
* ``MeshDiskCache``: a folder of ``.blend`` files, one per generated mesh, named by a hash of
  what decides its geometry (kind, parameters, size), the Blender version and the source of
  ``meshes.py``, so a change to either never serves old geometry. Files are written under a
  temporary name and renamed, so several workers on one machine share the folder safely; a
  mesh comes back through Blender's own file format, value for value as it was built.

Sizes are estimates (vertex, loop and face arrays; image pixels), meant to bound memory, not
to account for it exactly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bpy

from phieat.schema import hash_obj

logger = logging.getLogger("phieat.render")

# Default bound on what one session keeps between shards (approximate MB, all caches);
# ``PHIEAT_BLENDER_CACHE_MB`` overrides it and 0 frees everything between shards.
DEFAULT_CACHE_MB = 1024.0
# Share of the bound each cache gets, and at most how many datablocks it keeps.
CACHE_SHARES = {"meshes": 0.25, "materials": 0.5, "worlds": 0.25}
MAX_ITEMS = 512
# Generated geometry is kept on disk only when building it took at least this long: loading
# a small .blend costs a few ms, so cheap primitives are faster to build again.
DISK_MIN_BUILD_S = 0.02
# Part of every disk-cache key: bump when the file layout changes.
DISK_FORMAT = 1
MESH_KINDS_ON_DISK = ("primitive", "superquadric", "blob", "lathe", "furniture")


@dataclass
class CacheStats:
    """What one cache did: lookups that found a datablock, built one, and evictions."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions}


def _alive(datablock: bpy.types.ID) -> bool:
    try:
        datablock.name  # noqa: B018 - touching a removed ID raises ReferenceError
    except ReferenceError:
        return False
    return True


class DatablockCache:
    """Least-recently-used datablocks bounded by ``max_items`` and ``max_mb`` (approximate).

    ``remove(datablock)`` deletes an evicted datablock from ``bpy.data`` (its users, e.g. an
    object still showing it, must be gone: the session evicts only between views).
    """

    def __init__(
        self,
        name: str,
        max_mb: float,
        remove: Callable[[bpy.types.ID], None],
        max_items: int = MAX_ITEMS,
    ) -> None:
        self.name = name
        self.max_mb = float(max_mb)
        self.max_items = int(max_items)
        self._remove = remove
        self._items: OrderedDict[str, tuple[bpy.types.ID, float]] = OrderedDict()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def mb(self) -> float:
        return sum(size for _, size in self._items.values())

    def pointers(self) -> set[int]:
        """Addresses of the datablocks held (to tell them from others in ``bpy.data``)."""
        return {item[0].as_pointer() for item in self._items.values() if _alive(item[0])}

    def get(self, key: str) -> bpy.types.ID | None:
        """The datablock for ``key`` (counted as a hit), or ``None`` (a miss)."""
        item = self._items.get(key)
        if item is not None and not _alive(item[0]):
            del self._items[key]
            item = None
        if item is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return item[0]

    def put(self, key: str, datablock: bpy.types.ID, size_mb: float) -> None:
        """Keep ``datablock`` (given a fake user so purges leave it alone)."""
        datablock.use_fake_user = True
        self._items[key] = (datablock, float(size_mb))
        self._items.move_to_end(key)

    def discard(self, key: str) -> None:
        """Forget and remove one datablock (e.g. one whose texture stopped loading)."""
        item = self._items.pop(key, None)
        if item is not None:
            self._drop(item[0])

    def trim(self, keep: set[str] | None = None) -> None:
        """Evict least recently used datablocks until within bounds (never those in ``keep``)."""
        keep = keep or set()
        for key in list(self._items):
            if len(self._items) <= self.max_items and self.mb <= self.max_mb:
                return
            if key in keep:
                continue
            datablock, _ = self._items.pop(key)
            self.stats.evictions += 1
            self._drop(datablock)

    def clear(self, remove: bool = True) -> None:
        """Forget every datablock; ``remove`` also deletes them (else they are already gone)."""
        items = list(self._items.values())
        self._items.clear()
        if remove:
            for datablock, _ in items:
                self._drop(datablock)

    def _drop(self, datablock: bpy.types.ID) -> None:
        if not _alive(datablock):
            return
        datablock.use_fake_user = False
        self._remove(datablock)


def mesh_mb(mesh: bpy.types.Mesh) -> float:
    """Approximate memory of a mesh: positions, edges, corners, faces and their attributes."""
    per = 12 * len(mesh.vertices) + 8 * len(mesh.edges) + 12 * len(mesh.loops)
    per += 12 * len(mesh.polygons)
    return (per * max(1, len(mesh.attributes) // 2) + 4096) / 2**20


def images_mb(tree: bpy.types.NodeTree | None, seen: set[str] | None = None) -> float:
    """Approximate pixel memory of the images a node tree (and its groups) uses."""
    if tree is None:
        return 0.0
    seen = set() if seen is None else seen
    total = 0.0
    for node in tree.nodes:
        group = getattr(node, "node_tree", None)
        if node.type == "GROUP" and group is not None and group.name not in seen:
            seen.add(group.name)
            total += images_mb(group, seen)
        image = getattr(node, "image", None)
        if image is not None and image.name not in seen:
            seen.add(image.name)
            w, h = image.size
            depth = 16 if image.is_float else 4  # float images are 4 x float32 per pixel
            total += w * h * depth / 2**20
    return total


def file_signature(path: Path) -> list:
    """``[path, size, mtime_ns]`` of a file (``[path]`` if missing): part of a cache key,
    so a file replaced on disk is loaded again."""
    try:
        st = path.stat()
    except OSError:
        return [str(path)]
    return [str(path), st.st_size, st.st_mtime_ns]


def default_disk_dir() -> Path | None:
    """``PHIEAT_MESH_CACHE_DIR`` (``off`` or empty: no disk cache), else a folder under the
    system's temporary directory shared by every worker of this machine and user."""
    value = os.environ.get("PHIEAT_MESH_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)
    return Path(tempfile.gettempdir()) / f"phieat-mesh-cache-{os.getuid()}"


def _code_hash() -> str:
    from render.blender import meshes

    return hashlib.sha256(Path(meshes.__file__).read_bytes()).hexdigest()[:16]


class MeshDiskCache:
    """Generated mesh datablocks stored as ``.blend`` files, one per geometry key."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.stats = CacheStats()
        self.writes = 0
        self._salt = {
            "blender": bpy.app.version_string,
            "code": _code_hash(),
            "format": DISK_FORMAT,
        }

    @staticmethod
    def cacheable(entry: dict) -> bool:
        return entry.get("kind") in MESH_KINDS_ON_DISK

    def path(self, entry: dict) -> Path:
        geometry = {k: entry.get(k) for k in ("kind", "params", "size_m")}
        key = hash_obj({"geometry": geometry, **self._salt})
        return self.folder / f"{key[:32]}.blend"

    def load(self, entry: dict) -> bpy.types.Mesh | None:
        """The stored mesh for ``entry`` appended to ``bpy.data``, or ``None``."""
        if not self.cacheable(entry):
            return None
        path = self.path(entry)
        if not path.is_file():
            self.stats.misses += 1
            return None
        try:
            with bpy.data.libraries.load(str(path), link=False) as (src, dst):
                dst.meshes = list(src.meshes[:1])
        except (OSError, RuntimeError) as exc:
            logger.warning("mesh cache file %s is unreadable (%s): building again", path, exc)
            path.unlink(missing_ok=True)
            self.stats.misses += 1
            return None
        for library in [lib for lib in bpy.data.libraries if Path(lib.filepath) == path]:
            bpy.data.libraries.remove(library)
        meshes = [m for m in dst.meshes if m is not None]
        if not meshes:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return meshes[0]

    def store(self, entry: dict, mesh: bpy.types.Mesh) -> None:
        """Write ``mesh`` for ``entry`` (temporary name, then rename); errors only warn."""
        if not self.cacheable(entry):
            return
        path = self.path(entry)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".blend", dir=self.folder)
            os.close(fd)
            try:
                bpy.data.libraries.write(tmp, {mesh}, path_remap="NONE", compress=False)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self.writes += 1
        except (OSError, RuntimeError) as exc:
            logger.warning("cannot write mesh cache file %s: %s", path, exc)
