"""Caches that outlive a shard give the bytes of a fresh build; they are bounded and counted."""

from __future__ import annotations

import copy
import hashlib

import pytest

pytestmark = pytest.mark.blender


def _digest(view) -> str:
    return hashlib.sha256(view.image).hexdigest()


def _jobs(job: dict) -> list[dict]:
    """A deformed cylinder (slow to build: it goes to the disk cache), a cube under a studio
    rig with another material, and the first job again."""
    from assets import families, lights, meshes

    by_id = {m["id"]: m for m in meshes.builtin_meshes()}
    studio = next(e for e in lights.builtin_lights() if e["kind"] == "studio")
    # An unusual size gives a geometry key no other test has cached on disk yet.
    bent = dict(by_id["prim-cylinder-bend"], size_m=0.3125)
    first = dict(copy.deepcopy(job), mesh=bent)
    second = dict(
        copy.deepcopy(job),
        material=families.material_entry("wood", 3),
        mesh=by_id["prim-cube"],
        light=studio,
        seed=21,
    )
    return [first, second, first]


def test_views_from_caches_match_fresh_builds(session, job):
    """Built fresh, then from the session's caches after a shard ended, then with the
    session's caches dropped so the deformed cylinder comes from the disk cache: same bytes."""
    jobs = _jobs(job)
    session.reset(keep_caches=False)
    before = session.cache_stats()
    fresh = [_digest(session.render_view(j)) for j in jobs]
    built = session.cache_stats()
    assert built["mesh_disk"]["writes"] >= before["mesh_disk"]["writes"] + 1
    session.reset()  # end of a shard: the caches stay
    cached = [_digest(session.render_view(j)) for j in jobs]
    stats = session.cache_stats()
    for name in ("meshes", "materials", "worlds"):
        assert stats[name]["misses"] == built[name]["misses"], name  # nothing built again
        assert stats[name]["hits"] >= built[name]["hits"] + 3, name
    session.reset(keep_caches=False)
    from_disk = [_digest(session.render_view(j)) for j in jobs]
    assert session.cache_stats()["mesh_disk"]["hits"] >= stats["mesh_disk"]["hits"] + 1
    assert fresh == cached == from_disk
    assert fresh[0] == fresh[2] and fresh[0] != fresh[1]


@pytest.mark.slow
def test_cached_views_match_a_process_without_caches(session, job, fresh_process_digests):
    """A process with every cache off (each view built from scratch in a new session) gives
    the bytes of the long-lived session serving the same jobs from its caches."""
    jobs = _jobs(job)
    session.reset()
    for j in jobs:
        session.render_view(j)  # warm every cache
    session.reset()
    here = [_digest(session.render_view(j)) for j in jobs]
    assert fresh_process_digests(jobs, cache_mb=0, mesh_cache_dir=False) == here


def test_lru_keeps_within_count_and_size_and_counts(session):
    import bpy

    from render.blender.caches import DatablockCache

    removed = []

    def remove(datablock):
        removed.append(datablock.name)
        bpy.data.materials.remove(datablock)

    cache = DatablockCache("test", max_mb=3.0, remove=remove, max_items=3)
    for i in range(3):
        cache.put(f"k{i}", bpy.data.materials.new(f"phieat-lru-{i}"), 1.0)
    assert cache.get("k0") is not None  # k1 is now the least recently used
    assert cache.get("missing") is None
    cache.put("k3", bpy.data.materials.new("phieat-lru-3"), 1.0)
    cache.trim()
    assert removed == ["phieat-lru-1"] and len(cache) == 3
    cache.put("big", bpy.data.materials.new("phieat-lru-big"), 1.5)
    cache.trim(keep={"k0"})
    assert removed == ["phieat-lru-1", "phieat-lru-2", "phieat-lru-3"]
    assert cache.get("k0") is not None and cache.get("big") is not None
    assert cache.mb <= 3.0 and len(cache) <= 3
    assert cache.stats.as_dict() == {"hits": 3, "misses": 1, "evictions": 3}
    cache.clear()
    assert not any(m.name.startswith("phieat-lru-") for m in bpy.data.materials)


def test_purge_between_shards_keeps_cached_datablocks(session, job):
    import bpy

    session.reset()
    session.render_view(job)
    session.reset()
    stats = session.cache_stats()
    assert len(bpy.data.meshes) == stats["meshes"]["items"] >= 1
    assert len(bpy.data.materials) == stats["materials"]["items"] >= 1
    assert not [o for o in bpy.data.objects if o.name.startswith("phieat-object")]
    session.reset(keep_caches=False)
    assert len(bpy.data.meshes) == 0 and len(bpy.data.materials) == 0


def test_evicting_between_views_keeps_pixels(session, job, mesh_cache_dir):
    """A bound far below one datablock evicts everything a view built before the next view:
    the pixels stay those of the cached session, and nothing is left behind."""
    import bpy

    from render.blender.session import BlenderSession

    jobs = _jobs(job)
    session.reset()
    expected = [_digest(session.render_view(j)) for j in jobs]
    tight = BlenderSession(threads=1, cache_mb=0.001, mesh_cache_dir=mesh_cache_dir)
    try:
        assert [_digest(tight.render_view(j)) for j in jobs] == expected
        stats = tight.cache_stats()
        assert stats["meshes"]["evictions"] >= 2 and stats["materials"]["evictions"] >= 2
        tight.reset()
        assert len(bpy.data.meshes) <= 1 and len(bpy.data.materials) <= 1
    finally:
        tight.close()
