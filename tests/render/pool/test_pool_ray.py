"""Acceptance tests of the Ray pool with real Blender renders (32 px, 2 samples).

One Ray session and one pool of 2 actors are shared by the whole module: starting Ray and
importing bpy in an actor cost seconds, and long-lived actors are what the pool is for.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import pool_fakes
import pytest

from render import storage
from render.build import build
from render.pool import RenderPool, ensure_ray, shutdown_ray
from render.verify import iter_tar_samples, verify_dataset
from render.workers import ShardOutcome

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session():
    # Actors import the test helpers (fake sessions) too: they inherit this environment.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    # 4 logical CPUs (CI has 2 cores) so a fake-session pool's actors fit beside the idle
    # shared pool's, and one declared GPU for the (fake) GPU path.
    ensure_ray(num_cpus=4, num_gpus=1)
    yield
    shutdown_ray()


@pytest.fixture(scope="module")
def pool(ray_session):
    pool = RenderPool(workers=2, threads_per_worker=1, recycle_after_shards=0, poll_s=0.1)
    # Shards go only to started workers: both must be up for both to get a first shard.
    deadline = time.monotonic() + 120
    while len(pool.worker_info()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    yield pool
    pool.close()


@pytest.fixture
def ray_spec(make_spec, tmp_path):
    def make(n_materials: int = 4, **sections):
        pool_fakes.write_catalogs(tmp_path / "catalogs", n_materials=n_materials)
        sections.setdefault("dataset", {}).setdefault("shard_size", 2)
        return make_spec(output=f"file://{tmp_path}/out", **sections)

    return make


def _all_keys(result):
    index = storage.read_json(result.index_url)
    return [
        k
        for s in index["shards"]
        for k, _ in iter_tar_samples(storage.join(result.version_url, s["name"]))
    ]


def test_two_workers_build_a_two_shard_dataset_that_verifies(pool, ray_spec):
    spec = ray_spec()
    result = build(spec, pool=pool, progress=False)
    assert result.exit_code == 0, result.summary()
    assert sorted(result.rendered) == ["shard-000000.tar", "shard-000001.tar"]
    assert result.version_url.startswith("file://")
    workers = {
        storage.read_json(storage.join(result.version_url, f"shard-00000{i}.json"))["worker"]["pid"]
        for i in range(2)
    }
    assert len(workers) == 2  # both actors rendered a shard
    report = verify_dataset(spec.dataset.output)
    assert report.ok, report.summary()
    assert report.samples == 4 and report.images == 8
    assert pool.blender_version.startswith("5.")


def test_killed_worker_costs_only_its_shard(pool, ray_spec):
    # 64 px / 16 samples x 3 views: a shard lasts long enough to be killed half-way.
    spec = ray_spec(
        n_materials=6,
        dataset={"shard_size": 1, "views": 3},
        render={"resolution": 64, "samples": 16},
    )
    submitted: list[tuple[str, int]] = []
    killed: list[str] = []

    def kill_third(name: str, pid: int) -> None:
        submitted.append((name, pid))
        if len(submitted) == 3:  # an actor that has just started a shard (after a first one)
            killed.append(name)
            threading.Timer(0.05, os.kill, (pid, signal.SIGKILL)).start()

    attempts: dict[str, int] = {}
    crashes = pool.crashes
    pool.on_submit = kill_third
    try:
        result = build(
            spec,
            pool=pool,
            progress=False,
            on_shard=lambda o: attempts.__setitem__(o.name, o.attempts),
        )
    finally:
        pool.on_submit = None
    assert pool.crashes == crashes + 1
    assert result.exit_code == 0 and result.complete, result.summary()
    assert attempts[killed[0]] == 2  # the killed shard was re-queued once, on a fresh actor
    assert all(n == 1 for name, n in attempts.items() if name != killed[0])
    keys = Counter(_all_keys(result))
    assert sorted(keys) == [f"mat-{i:03d}__g0000" for i in range(6)]
    assert set(keys.values()) == {1}
    assert verify_dataset(result.version_url).ok


def test_interrupted_driver_then_rerun_renders_only_missing_shards(pool, ray_spec):
    spec = ray_spec(n_materials=4, dataset={"shard_size": 1})

    def interrupt(outcome: ShardOutcome) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(spec, pool=pool, progress=False, on_shard=interrupt)
    version_url = next(
        u
        for u in [
            storage.join(spec.dataset.output, n) for n in storage.list_names(spec.dataset.output)
        ]
        if "/v-" in u
    )
    published = {
        n.replace(".json", ".tar")
        for n in storage.list_names(version_url)
        if n.startswith("shard-") and n.endswith(".json")
    }
    assert 1 <= len(published) < 4, published
    resumed = build(spec, pool=pool, progress=False)
    assert set(resumed.skipped) == published
    assert set(resumed.rendered) == {f"shard-00000{i}.tar" for i in range(4)} - published
    assert verify_dataset(spec.dataset.output).ok


def test_corrupt_material_is_recorded_and_the_rest_completes(pool, ray_spec, tmp_path):
    spec = ray_spec(n_materials=3, dataset={"shard_size": 4}, build={"max_failure_fraction": 0.5})
    broken = pool_fakes.material("broken-tex", family="no-such-family")
    pool_fakes.write_catalogs(tmp_path / "catalogs", n_materials=3, extra_materials=[broken])
    result = build(spec, pool=pool, progress=False)
    assert result.exit_code == 0 and result.complete
    failures = (
        storage.read_bytes(storage.join(result.version_url, "failures.jsonl")).decode().splitlines()
    )
    assert len(failures) == 1 and "broken-tex" in failures[0] and "no-such-family" in failures[0]
    assert sorted(_all_keys(result)) == [f"mat-{i:03d}__g0000" for i in range(3)]
    assert verify_dataset(result.version_url).ok


def test_stuck_material_times_out_and_the_rest_of_its_shard_lands(ray_session, ray_spec, tmp_path):
    """A view that never finishes: the driver stops its actor, retries the material once
    (max_retries = 1), then renders the shard without it and records the timeout."""
    spec = ray_spec(
        n_materials=5,
        dataset={"shard_size": 3},
        build={"material_timeout_s": 1.0, "max_retries": 1, "max_failure_fraction": 0.5},
    )
    stuck = pool_fakes.material("stuck-mat", sleep_s=120)
    pool_fakes.write_catalogs(tmp_path / "catalogs", n_materials=5, extra_materials=[stuck])
    timeout_pool = RenderPool(
        session_factory=pool_fakes.fake_factory,
        workers=2,
        recycle_after_shards=0,
        material_timeout_s=spec.build.material_timeout_s,
        # Backstop: if the material timeout failed to act, the stuck shard fails in 30 s.
        shard_timeout_s=30,
        shard_attempts=1,
        poll_s=0.1,
    )
    attempts: dict[str, int] = {}
    try:
        result = build(
            spec,
            pool=timeout_pool,
            progress=False,
            on_shard=lambda o: attempts.__setitem__(o.name, o.attempts),
        )
    finally:
        timeout_pool.close()
    assert result.exit_code == 0 and result.complete, result.summary()
    assert set(attempts.values()) == {1}  # a timed-out material does not cost shard attempts
    failures = [
        json.loads(line)
        for line in storage.read_bytes(storage.join(result.version_url, "failures.jsonl"))
        .decode()
        .splitlines()
    ]
    assert [(f["material_id"], f["attempts"]) for f in failures] == [("stuck-mat", 2)]
    assert "timeout after 1 s" in failures[0]["reason"]
    keys = Counter(_all_keys(result))
    assert sorted(keys) == [f"mat-{i:03d}__g0000" for i in range(5)]
    assert set(keys.values()) == {1}
    assert verify_dataset(result.version_url).ok


def test_the_last_shard_takes_over_the_idle_actors_threads(ray_session, ray_spec, tmp_path):
    """Two 1-thread actors, one quick shard and one slow one: once the quick one is done and
    nothing is queued, the slow shard's actor renders its remaining views with 2 threads."""
    spec = ray_spec(n_materials=1, dataset={"shard_size": 1, "views": 12})
    slow = pool_fakes.material("slow-mat", sleep_s=0.5)
    pool_fakes.write_catalogs(tmp_path / "catalogs", n_materials=1, extra_materials=[slow])
    tail_pool = RenderPool(
        session_factory=pool_fakes.fake_factory, workers=2, recycle_after_shards=0, poll_s=0.05
    )
    try:
        deadline = time.monotonic() + 60
        while len(tail_pool.worker_info()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        result = build(spec, pool=tail_pool, progress=False)
    finally:
        tail_pool.close()
    assert result.exit_code == 0 and result.complete, result.summary()
    threads = {}
    index = storage.read_json(result.index_url)
    for shard in index["shards"]:
        for key, members in iter_tar_samples(storage.join(result.version_url, shard["name"])):
            threads[key] = [v["threads"] for v in json.loads(members["json"])["views"]]
    quick, slow_views = threads["mat-000__g0000"], threads["slow-mat__g0000"]
    assert set(quick) == {1}
    # Views are listed in view order, not the order they were rendered in.
    assert set(slow_views) == {1, 2} and slow_views.count(2) >= 3, slow_views


def test_gpu_workers_fall_back_to_cuda_and_compile_kernels_once(
    ray_session, ray_spec, tmp_path, caplog
):
    """GPU scheduling with fake sessions: the bpy wheel cannot drive GPUs on CI machines."""
    spec = ray_spec(n_materials=4, dataset={"shard_size": 1})
    gpu_pool = RenderPool(
        session_factory=pool_fakes.cuda_only_factory,
        workers=2,
        gpus_per_worker=0.5,  # two actors share the one declared GPU
        kernel_cache=tmp_path / "kernels",
        recycle_after_shards=0,
        poll_s=0.05,
    )
    try:
        # Shards go only to started workers: let both start, so both warm up.
        deadline = time.monotonic() + 60
        while len(gpu_pool.worker_info()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        caplog.set_level("INFO", logger="phieat.render")
        result = build(spec, pool=gpu_pool, progress=False)
        devices = {info["device"] for info in gpu_pool.worker_info()}
    finally:
        gpu_pool.close()
    assert result.exit_code == 0 and devices == {"CUDA"}
    compiled = [r for r in caplog.records if "compiled Cycles CUDA kernels" in r.getMessage()]
    cached = [r for r in caplog.records if "kernels from the node cache" in r.getMessage()]
    assert len(compiled) == 1 and len(cached) == 1
    assert (tmp_path / "kernels" / "warm-5.0.1-CUDA.done").exists()


def test_a_worker_larger_than_the_cluster_is_refused(pool):
    with pytest.raises(RuntimeError, match="--threads-per-worker"):
        RenderPool(workers=1, threads_per_worker=64)
    with pytest.raises(RuntimeError, match="--gpus-per-worker"):
        RenderPool(workers=1, gpus_per_worker=2)


def test_progress_moves_per_view_and_cache_counts_come_back(pool, ray_spec, monkeypatch, caplog):
    """The driver hears of views while their shard renders (not only when it ends), every
    image is counted once, and the actors' cache counts are summed: the shards share meshes
    and lights, so later lookups hit."""
    import logging

    import render.pool.driver

    monkeypatch.setattr(render.pool.driver, "PROGRESS_POLL_S", 0.1)
    monkeypatch.setattr(render.pool.driver, "PROGRESS_LOG_S", 0.0)
    spec = ray_spec(
        n_materials=4,
        dataset={"shard_size": 1, "views": 4},
        render={"resolution": 48, "samples": 8},
    )
    steps: list[int] = []
    pool.on_view = steps.append
    try:
        with caplog.at_level(logging.INFO, logger="phieat.render"):
            result = build(spec, pool=pool, progress=False)
    finally:
        pool.on_view = None
    assert result.exit_code == 0, result.summary()
    assert sum(steps) == 16 and min(steps) < 4, steps  # some steps were part of a shard
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rendered ")]
    assert lines and lines[-1].startswith("rendered 16/16 images (100 %), ")
    stats = pool.cache_stats()
    assert stats["meshes"]["hits"] + stats["meshes"]["misses"] >= 16
    assert stats["worlds"]["hits"] > 0
    assert "meshes " in pool.cache_summary()
