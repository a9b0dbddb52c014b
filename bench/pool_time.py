"""Where a pool's actor-seconds went, from the sidecars of the shards it published (used by
``bench/render_bench.py``)."""

from __future__ import annotations

from phieat.schema import sidecar_name
from render import storage


def actor_time_split(version_url: str, wall: float, workers: int) -> dict[str, float]:
    """Where the pool's actor-seconds (actors x wall) went, from the shards' sidecars:
    ``engine`` (Cycles), ``in_shard`` (the rest of rendering a shard: building scenes,
    reading passes, encoding, writing and publishing the tar, the reset between shards),
    ``tail`` (actors done while another still renders its last shard) and ``other`` (the
    build's own start and end, gaps between an actor's shards); each in seconds. Also
    ``images``, the views the shards hold (each sidecar's ``engine_s`` sums their Cycles
    time)."""
    index = storage.read_json(storage.join(version_url, "index.json"))
    by_actor: dict[int, list[dict]] = {}
    for shard in index["shards"]:
        side = storage.read_json(storage.join(version_url, sidecar_name(shard["name"])))
        by_actor.setdefault(side["worker"]["pid"], []).append(side)
    ends = {pid: max(s["created"] for s in sides) for pid, sides in by_actor.items()}
    last = max(ends.values(), default=0.0)
    engine = sum(s["engine_s"] for sides in by_actor.values() for s in sides)
    busy = sum(s["render_s"] for sides in by_actor.values() for s in sides)
    # An actor that rendered nothing was idle the whole build: all of it counts as tail.
    idle = wall * max(0, workers - len(by_actor))
    tail = sum(last - end for end in ends.values()) + idle
    return {
        "engine": engine,
        "in_shard": busy - engine,
        "tail": tail,
        "other": max(0.0, workers * wall - busy - tail),
        "actor_s": workers * wall,
        "images": sum(s["images"] for sides in by_actor.values() for s in sides),
    }


def split_note(split: dict[str, float]) -> str:
    """``split`` as shares of the actor-seconds, and the in-shard cost over Cycles' time."""
    total = split["actor_s"] or 1.0
    share = ", ".join(
        f"{name.replace('_', '-')} {100 * split[name] / total:.1f} %"
        for name in ("engine", "in_shard", "tail", "other")
    )
    steady = 100 * split["in_shard"] / split["engine"] if split["engine"] else float("nan")
    return f"actor time: {share}; while rendering: {steady:+.1f} % over Cycles"
