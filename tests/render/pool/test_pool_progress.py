"""Per-view progress (images done, rate, ETA) and the summed cache counts of the pool."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from render.pool import ViewProgress  # noqa: E402
from render.workers import format_cache_stats, sum_cache_stats  # noqa: E402


def test_progress_counts_views_in_flight_and_never_goes_back():
    progress = ViewProgress(total=10)
    assert progress.update(3) == 3  # three views of a shard in flight
    assert progress.update(2) == 0  # its shard was re-queued: nothing new until it passes 3
    assert progress.update(4) == 1
    assert progress.shard_done(4, 0) == 0  # the shard finished: its 4 images, as shown
    assert progress.shard_done(6, 0) == 6 and progress.shown == 10
    assert progress.update(50) == 0  # never past the total
    line = progress.line()
    assert line.startswith("10/10 images (100 %), ") and "images/s, ETA 0:00" in line


def test_eta_from_the_rate_so_far(monkeypatch):
    import render.progress as pool

    clock = [100.0]
    monkeypatch.setattr(pool.time, "monotonic", lambda: clock[0])
    progress = ViewProgress(total=100)
    clock[0] += 10.0
    progress.update(20)  # 2 images/s: 80 left take 40 s
    assert progress.line() == "20/100 images (20 %), 2.00 images/s, ETA 0:40"


def test_cache_stats_are_summed_over_actors_and_formatted():
    a = {
        "meshes": {"hits": 6, "misses": 2, "evictions": 0, "items": 2, "mb": 1.5},
        "mesh_disk": {"hits": 1, "misses": 1, "evictions": 0, "writes": 1},
    }
    b = {"meshes": {"hits": 2, "misses": 0, "evictions": 1, "items": 1, "mb": 0.5}}
    total = sum_cache_stats([a, b])
    assert total["meshes"] == {"hits": 8, "misses": 2, "evictions": 1, "items": 3, "mb": 2.0}
    assert format_cache_stats(total) == (
        "meshes 8/10 hits (80 %), 1 evicted; mesh disk 1/2 hits (50 %), 1 written"
    )
    assert format_cache_stats({}) == ""


def test_build_bar_moves_per_view_and_tops_up_at_each_shard():
    from render.build import _Progress

    bar = _Progress(True, images=10, shards=2)
    bar.view(3)  # views of the first shard as they finish
    assert bar.bar.n == 3
    bar.update(4, failures=1)  # it finished with one sample failed: its view never came
    assert bar.bar.n == 4
    bar.view(2)
    bar.view(9)  # a re-counted view never takes the bar past its total
    assert bar.bar.n == 10
    bar.update(6, failures=0)
    assert bar.bar.n == 10 and bar.shards_done == 2 and bar.failures == 1
    bar.close()
