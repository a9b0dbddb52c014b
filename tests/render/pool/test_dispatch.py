"""Cache-affine choice of the next shard (``render.dispatch``), without Ray or Blender."""

from __future__ import annotations

from collections import deque

from render.dispatch import RecentAssets, ShardAssets, pick_shard, shard_assets


def shard(name: str, *views: tuple[str, str], material: str = "mat") -> dict:
    """A shard of one sample whose views use these (mesh, light) pairs."""
    jobs = [
        {"view": i, "material": {"id": material}, "mesh": {"id": m}, "light": {"id": light}}
        for i, (m, light) in enumerate(views)
    ]
    return {"name": name, "samples": [{"key": f"{name}-s", "views": jobs}]}


def held(*shards: dict) -> RecentAssets:
    recent = RecentAssets()
    for s in shards:
        recent.add(shard_assets(s))
    return recent


def test_shard_assets_lists_meshes_lights_and_materials():
    s = shard("a", ("cube", "sky-00"), ("torus", "sky-00"), material="m1")
    assert shard_assets(s) == {"mesh:cube", "mesh:torus", "light:sky-00", "material:m1"}


def test_a_worker_with_nothing_cached_takes_the_head_of_the_queue():
    queue = [shard("a", ("cube", "sky-00")), shard("b", ("torus", "sky-01"))]
    assert pick_shard(queue, RecentAssets()) == 0
    assert pick_shard(queue, held(shard("x", ("sphere", "sky-09")))) == 0


def test_the_shard_sharing_the_most_meshes_and_lights_wins():
    queue = [
        shard("a", ("cube", "sky-00")),
        shard("b", ("torus", "sky-01")),
        shard("c", ("torus", "sky-01"), ("cone", "sky-02")),
        shard("d", ("torus", "sky-05")),
    ]
    recent = held(shard("done", ("torus", "sky-01"), ("cone", "sky-02")))
    assert pick_shard(queue, recent) == 2


def test_ties_go_to_queue_order_and_the_choice_is_repeatable():
    queue = deque(
        [
            shard("a", ("cube", "sky-00")),
            shard("b", ("torus", "sky-01")),
            shard("c", ("torus", "sky-02")),
        ]
    )
    recent = held(shard("done", ("torus", "sky-09")))
    assert [pick_shard(queue, recent) for _ in range(3)] == [1, 1, 1]


def test_only_the_first_scan_shards_are_compared():
    queue = [shard(f"s{i}", ("cube", "sky-00")) for i in range(10)]
    queue.append(shard("match", ("torus", "sky-01")))
    recent = held(shard("done", ("torus", "sky-01")))
    assert pick_shard(queue, recent, scan=10) == 0
    assert pick_shard(queue, recent, scan=11) == 10


def test_recent_assets_keep_the_latest_ids_within_the_limit():
    recent = RecentAssets(limit=3)
    recent.add({"mesh:a", "mesh:b"})
    recent.add({"mesh:c", "mesh:d"})
    assert len(recent) == 3
    assert "mesh:a" not in recent and "mesh:d" in recent and "mesh:c" in recent
    recent.add({"mesh:b"})  # seen again: the most recent now
    recent.add({"mesh:e"})
    assert "mesh:b" in recent and "mesh:e" in recent


def test_shard_assets_are_computed_once_per_shard_name():
    assets = ShardAssets()
    s = shard("a", ("cube", "sky-00"))
    first = assets(s)
    assert first == shard_assets(s)
    assert assets(s) is first


def test_dispatch_order_of_a_two_worker_run_is_deterministic():
    """Replaying the same completions gives the same shard -> worker assignment."""
    groups = [("cube", "sky-00"), ("torus", "sky-01")]
    # Queue order g0 g1 g1 g0 g0 g1 g1 g0: strict queue order would give each worker both.
    shards = [shard(f"s{i}", groups[((i + 1) // 2) % 2]) for i in range(8)]

    def replay() -> list[tuple[str, int]]:
        queue, workers, order = deque(shards), [RecentAssets(), RecentAssets()], []
        turn = 0
        while queue:
            worker = workers[turn % 2]
            i = pick_shard(queue, worker)
            taken = queue[i]
            del queue[i]
            worker.add(shard_assets(taken))
            order.append((taken["name"], turn % 2))
            turn += 1
        return order

    first = replay()
    assert first == replay()
    # Each worker stays with the meshes and lights it started with.
    by_worker = {w: {n for n, ww in first if ww == w} for w in (0, 1)}
    assert by_worker == {0: {"s0", "s3", "s4", "s7"}, 1: {"s1", "s2", "s5", "s6"}}
