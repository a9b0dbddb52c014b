"""The Ray pool on a multi-node cluster started on this machine (``ray.cluster_utils``).

The head has 0 CPUs, as in deploy/cluster.yaml: it only schedules. Worker nodes have 1 CPU
each and are added and killed by the tests; their sessions are fakes whose views take a set
time, so a build lasts a few seconds and a node can be lost or gained half-way. The head
checks node health every second, so a lost node is noticed in about 2 s instead of Ray's
default 15-40 s.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from cluster_fakes import FAKES_PATH, slow_factory
from ray.cluster_utils import Cluster

from render import storage
from render.build import build
from render.pool import RenderPool, ensure_ray, shutdown_ray
from render.verify import iter_tar_samples, verify_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 2,
}
VIEW_S = 0.3  # a shard of 2 samples x 2 views takes 1.2 s


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_ADDRESS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [FAKES_PATH, saved["PYTHONPATH"]]))
    shutdown_ray()
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH_CHECKS},
    )
    ensure_ray(address=nodes.address)
    yield nodes
    shutdown_ray()
    nodes.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def worker_nodes(cluster: Cluster, count: int) -> list:
    """Exactly ``count`` 1-CPU worker nodes, alive and registered."""
    while len(cluster.worker_nodes) < count:
        cluster.add_node(num_cpus=1)
    while len(cluster.worker_nodes) > count:
        cluster.remove_node(next(iter(cluster.worker_nodes)))
    cluster.wait_for_nodes()
    return sorted(cluster.worker_nodes, key=lambda node: node.node_id)


def new_pool(**kwargs) -> RenderPool:
    return RenderPool(
        session_factory=slow_factory(VIEW_S), recycle_after_shards=0, poll_s=0.1, **kwargs
    )


def wait_started(pool: RenderPool, count: int, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while len(infos := pool.worker_info()) < count:
        assert time.monotonic() < deadline, f"only {len(infos)} of {count} workers started"
        time.sleep(0.1)
    return infos


def sample_keys(result) -> Counter:
    index = storage.read_json(result.index_url)
    return Counter(
        key
        for shard in index["shards"]
        for key, _ in iter_tar_samples(storage.join(result.version_url, shard["name"]))
    )


def test_a_head_with_no_cpus_only_schedules(cluster, cluster_spec):
    nodes = worker_nodes(cluster, 2)
    spec = cluster_spec(n_materials=4)
    pool = new_pool(workers=0)
    try:
        assert pool.workers == 2  # one per worker node's CPU; none on the head
        # Both placed before the build: on a loaded machine one actor could otherwise render
        # every shard before the other has started, and never be listed.
        wait_started(pool, 2)
        result = build(spec, pool=pool, progress=False)
        infos = pool.worker_info()
    finally:
        pool.close()
    assert result.exit_code == 0 and result.complete, result.summary()
    assert {info["node_id"] for info in infos} == {node.node_id for node in nodes}
    assert cluster.head_node.node_id not in {info["node_id"] for info in infos}
    assert verify_dataset(result.version_url).ok


def test_losing_a_node_mid_build_requeues_its_shard_and_the_build_completes(
    cluster, cluster_spec, caplog
):
    victim = worker_nodes(cluster, 2)[1]
    spec = cluster_spec(n_materials=20)  # 10 shards
    pool = new_pool(workers=0)
    node_of = {info["pid"]: info["node_id"] for info in wait_started(pool, 2)}
    # The victim's replacement finds no node with a free CPU: dropped after 4 s, while the
    # surviving worker still has several shards to render.
    pool.placement_timeout_s = 4.0
    submitted: list[tuple[str, int]] = []
    killed: list[str] = []

    def kill_victim(name: str, pid: int) -> None:
        submitted.append((name, pid))
        on_victim = [n for n, p in submitted if node_of.get(p) == victim.node_id]
        if len(on_victim) == 2 and not killed:  # its second shard has just been handed over
            killed.append(name)
            cluster.remove_node(victim, allow_graceful=False)

    pool.on_submit = kill_victim
    attempts: dict[str, int] = {}
    caplog.set_level("INFO", logger="phieat.render")
    try:
        result = build(
            spec,
            pool=pool,
            progress=False,
            on_shard=lambda o: attempts.__setitem__(o.name, o.attempts),
        )
    finally:
        pool.close()
    assert result.exit_code == 0 and result.complete, result.summary()
    assert killed and result.requeued == killed
    [(node, requeued)] = result.lost_nodes.items()
    assert node.startswith(victim.node_id[:8]) and requeued == killed
    assert attempts[killed[0]] == 1  # a lost node does not use up the shard's attempts
    assert f"lost     node {node}: re-queued {killed[0]}" in result.summary()
    keys = sample_keys(result)
    assert sorted(keys) == [f"mat-{i:03d}__g0000" for i in range(20)]
    assert set(keys.values()) == {1}
    assert verify_dataset(result.version_url).ok
    dropped = [r.getMessage() for r in caplog.records if "could not be placed" in r.getMessage()]
    assert dropped and f"lost node {node}" in dropped[0], dropped


def test_a_node_that_joins_mid_build_gets_work(cluster, cluster_spec):
    worker_nodes(cluster, 1)
    spec = cluster_spec(n_materials=20)  # 10 shards
    pool = new_pool(workers=0)
    assert pool.workers == 1
    joined: list = []
    submitted: dict[str, int] = {}

    def grow(outcome) -> None:
        if not joined:
            joined.append(cluster.add_node(num_cpus=1))

    pool.on_submit = submitted.__setitem__
    try:
        result = build(spec, pool=pool, progress=False, on_shard=grow)
        node_of = {info["pid"]: info["node_id"] for info in pool.worker_info()}
    finally:
        pool.close()
    assert result.exit_code == 0 and result.complete, result.summary()
    on_new_node = [n for n, pid in submitted.items() if node_of.get(pid) == joined[0].node_id]
    assert on_new_node, submitted
    keys = sample_keys(result)
    assert len(keys) == 20 and set(keys.values()) == {1}
    assert verify_dataset(result.version_url).ok


def test_losing_the_last_node_fails_what_is_left_and_a_rerun_finishes(cluster, cluster_spec):
    [only] = worker_nodes(cluster, 1)
    spec = cluster_spec(n_materials=8)  # 4 shards
    pool = new_pool(workers=0)
    wait_started(pool, 1)
    pool.placement_timeout_s = 3.0  # no node can host a replacement: give up after 3 s
    killed: list[str] = []

    def kill_only_node(name: str, pid: int) -> None:
        if not killed:
            killed.append(name)
            cluster.remove_node(only, allow_graceful=False)

    pool.on_submit = kill_only_node
    started = time.monotonic()
    try:
        result = build(spec, pool=pool, progress=False)
    finally:
        pool.close()
    assert time.monotonic() - started < 60  # a message, not a wait for ever
    assert result.exit_code == 1 and not result.complete
    assert len(result.failed_shards) == 4 and not result.rendered
    assert "no render worker could run on the Ray cluster for 3 s" in result.summary()

    worker_nodes(cluster, 1)  # the cluster grows again: the same build finishes
    pool = new_pool(workers=0)
    try:
        rerun = build(spec, pool=pool, progress=False)
    finally:
        pool.close()
    assert rerun.exit_code == 0 and rerun.complete, rerun.summary()
    assert len(rerun.rendered) == 4
    assert verify_dataset(rerun.version_url).ok
