"""Cache-affine dispatch: which queued shard a free pool worker renders next.

A worker's Blender session keeps the meshes, materials and worlds it built across shards
(``render.blender.caches``), so a worker that rendered shards with mesh ``blob-04`` and the
``sky-00`` light renders the next shard using them faster. ``pick_shard`` looks at the first
``scan`` queued shards and returns the one that shares the most mesh, light and material IDs
with the worker's ``RecentAssets`` (the IDs of the shards it rendered last); ties, and a
worker with nothing in common with any of them, go by queue order. The choice depends only
on the queue and the worker's history, so dispatch is deterministic for a given order of
completions; it only changes which worker renders a shard, never what the shard holds.

At the end of a build, ``tail_threads`` says how many Cycles threads each busy worker may
use: its own plus an even share of those of its node's idle workers (the pixels do not
depend on the thread count), so the build does not wait on one worker's last shard at one
thread while the node's other cores sit idle.

The cost is bounded: a shard's IDs are computed once per shard (``ShardAssets``), each
worker's summary holds at most ``limit`` IDs, and a choice scans at most ``scan`` shards.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

# Queued shards compared per choice; the rest wait their turn in queue order.
SCAN_LIMIT = 64
# IDs remembered per worker: the session's caches hold at most 512 datablocks each.
SUMMARY_LIMIT = 512


def shard_assets(shard: dict) -> frozenset[str]:
    """The mesh, light and material IDs the views of ``shard`` use, as ``kind:id``."""
    ids: set[str] = set()
    for sample in shard.get("samples", ()):
        for job in sample.get("views", ()):
            for kind in ("mesh", "light", "material"):
                entry = job.get(kind)
                if entry and "id" in entry:
                    ids.add(f"{kind}:{entry['id']}")
    return frozenset(ids)


class ShardAssets:
    """``shard_assets`` remembered by shard name (a shard's content never changes)."""

    def __init__(self) -> None:
        self._by_name: dict[str, frozenset[str]] = {}

    def __call__(self, shard: dict) -> frozenset[str]:
        name = shard["name"]
        ids = self._by_name.get(name)
        if ids is None:
            ids = self._by_name[name] = shard_assets(shard)
        return ids


class RecentAssets:
    """The IDs of the shards a worker rendered last, most recent kept, at most ``limit``."""

    def __init__(self, limit: int = SUMMARY_LIMIT) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, ids: Iterable[str]) -> None:
        for key in sorted(ids):  # sorted: which IDs fall out does not depend on set order
            self._ids[key] = None
            self._ids.move_to_end(key)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def pick_shard(
    queue: Sequence[dict] | Iterable[dict],
    held: RecentAssets,
    assets: Callable[[dict], frozenset[str]] = shard_assets,
    scan: int = SCAN_LIMIT,
) -> int:
    """Index in ``queue`` of the shard a worker holding ``held`` should render next.

    The shard among the first ``scan`` that shares the most IDs with ``held``; the earliest
    of equals; 0 when ``held`` is empty or shares nothing (plain queue order).
    """
    if not len(held):
        return 0
    best, best_score = 0, 0
    for i, shard in enumerate(islice(queue, scan)):
        score = sum(1 for key in assets(shard) if key in held)
        if score > best_score:
            best, best_score = i, score
    return best


def tail_threads(actors: Iterable[tuple[int, str, bool]], threads: int) -> dict[int, int]:
    """``{serial: threads}`` for the busy actors that may use more than their own ``threads``.

    ``actors``: ``(serial, node, busy)`` of every started actor, each holding ``threads``
    Cycles threads. The threads of a node's idle actors are split evenly over its busy ones,
    lowest serials first for the remainder; nodes without a busy or an idle actor give none.
    """
    busy: dict[str, list[int]] = {}
    idle: dict[str, int] = {}
    for serial, node, is_busy in actors:
        if is_busy:
            busy.setdefault(node, []).append(serial)
        else:
            idle[node] = idle.get(node, 0) + threads
    wanted: dict[int, int] = {}
    for node, serials in busy.items():
        share, extra = divmod(idle.get(node, 0), len(serials))
        for i, serial in enumerate(sorted(serials)):
            bonus = share + (1 if i < extra else 0)
            if bonus:
                wanted[serial] = threads + bonus
    return wanted
