"""Cache-affine dispatch through the Ray pool with real Blender renders (32 px, 2 samples).

Two groups of shards use disjoint meshes and lights, queued g0 g1 g1 g0 g0 g1 ...: in strict
queue order both actors end up building both groups; with affinity each actor keeps to the
group it started with, so its mesh cache hits more. The images are the same either way.
"""

from __future__ import annotations

import os
import time

import pool_fakes
import pytest

from render import storage
from render.plan import load_catalogs, make_plan
from render.pool import RenderPool, ensure_ray, shutdown_ray
from render.verify import iter_tar_samples

pytestmark = [pytest.mark.blender, pytest.mark.slow]

GROUPS = [
    (("uv_sphere", "cube", "torus"), ("city", "forest")),
    (("cylinder", "cone", "ico_sphere"), ("studio", "sunset")),
]


@pytest.fixture(scope="module")
def ray_session():
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()


def grouped_shards(make_spec, tmp_path, n_shards: int = 12) -> list[dict]:
    """Planned shards of 1 material x 3 views, each view's mesh and light from its group."""
    pool_fakes.write_catalogs(tmp_path / "catalogs", n_materials=n_shards)
    spec = make_spec(dataset={"shard_size": 1, "views": 3})
    plan = make_plan(spec, load_catalogs(spec))
    base_dirs = {k: str(spec.catalog_path(k).parent) for k in ("materials", "meshes", "lights")}
    shards = []
    for i, planned in enumerate(plan.shards):
        meshes, lights = GROUPS[((i + 1) // 2) % 2]
        shard = {**planned.to_dict(), "base_dirs": base_dirs}
        for sample in shard["samples"]:
            for v, job in enumerate(sample["views"]):
                shape = meshes[v % len(meshes)]
                job["mesh"] = pool_fakes.mesh(f"mesh-{shape.replace('_', '-')}", shape)
                job["light"] = pool_fakes.light(lights[v % len(lights)])
        shards.append(shard)
    assert len(shards) == n_shards
    return shards


def run_pool(shards: list[dict], url: str, affinity: bool) -> tuple[dict, dict]:
    pool = RenderPool(
        workers=2, threads_per_worker=1, recycle_after_shards=0, poll_s=0.05, affinity=affinity
    )
    try:
        deadline = time.monotonic() + 120
        while len(pool.worker_info()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        outcomes = list(pool.run(shards, url, 0))
        stats = pool.cache_stats()
    finally:
        pool.close()
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    images = {
        (shard["name"], key, member): data
        for shard in shards
        for key, members in iter_tar_samples(storage.join(url, shard["name"]))
        for member, data in members.items()
        if member != "json"
    }
    return stats, images


def test_affinity_raises_mesh_cache_hits_and_keeps_the_images(ray_session, make_spec, tmp_path):
    shards = grouped_shards(make_spec, tmp_path)
    on, on_images = run_pool(shards, f"file://{tmp_path}/on", affinity=True)
    off, off_images = run_pool(shards, f"file://{tmp_path}/off", affinity=False)
    lookups = {s["meshes"]["hits"] + s["meshes"]["misses"] for s in (on, off)}
    assert lookups == {36}  # 12 shards x 3 views, one mesh lookup each
    # With affinity each actor builds one group's 3 meshes (6 misses; at most 9 if an actor
    # runs out of its group at the end); in queue order both actors build both groups.
    assert on["meshes"]["hits"] > off["meshes"]["hits"], (on, off)
    assert on["meshes"]["misses"] <= 9
    assert on_images.keys() == off_images.keys() and on_images == off_images
