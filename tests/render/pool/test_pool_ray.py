"""Acceptance tests of the Ray pool with real Blender renders (32 px, 2 samples).

One Ray session and one pool of 2 actors are shared by the whole module: starting Ray and
importing bpy in an actor cost seconds, and long-lived actors are what the pool is for.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pool_fakes
import pytest

from render import storage
from render.build import ShardOutcome, build
from render.pool import RenderPool, ensure_ray, shutdown_ray
from render.verify import iter_tar_samples, verify_dataset

pytestmark = [pytest.mark.blender, pytest.mark.slow]


@pytest.fixture(scope="module")
def pool():
    ensure_ray(num_cpus=2)  # a local Ray on the 2 cores CI has; no dashboard, quiet
    pool = RenderPool(workers=2, threads_per_worker=1, recycle_after_shards=0, poll_s=0.1)
    yield pool
    pool.close()
    shutdown_ray()


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
    assert result.rendered == ["shard-000000.tar", "shard-000001.tar"]
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
    spec = ray_spec(n_materials=6, dataset={"shard_size": 1})
    killed: list[int] = []
    attempts: dict[str, int] = {}

    def kill_one(outcome: ShardOutcome) -> None:
        attempts[outcome.name] = outcome.attempts
        if killed:
            return
        for _ in range(50):
            busy = pool.in_flight()
            if busy:
                pid = next(iter(busy.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    crashes = pool.crashes
    result = build(spec, pool=pool, progress=False, on_shard=kill_one)
    assert killed and pool.crashes > crashes
    assert result.exit_code == 0 and result.complete, result.summary()
    assert max(attempts.values()) == 2  # the killed shard was re-queued once
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
    assert 1 <= len(published) < 4
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
