"""Hard-negative groups: which samples of a generation share their views, and how shards
are packed so a group stays together.

A spec's ``[hard_negatives] group_size = k`` (0 = off) groups the regular samples of each
generation: they are bucketed by pool and by how many samples of the same material came
before (so a bucket holds each material at most once: bucket ``g`` is sample ``g`` of every
fresh material), each bucket is shuffled with its own generator (seed, generation, pool,
bucket) and cut into groups of ``k`` (the last one may be smaller). The planner
(``render.plan``) shuffles each group into the generation as one unit and packs shards
with ``pack_shards``; the members' shared views are drawn in ``render.views``.
"""

from __future__ import annotations

import numpy as np

from render.spec import Spec
from render.views import HARD_NEGATIVE_SALT, digest


def hard_negative_groups(spec: Spec, generation: int, samples: list[dict]) -> list[list[dict]]:
    """``samples`` (snapshot records) as units: groups of ``group_size`` different materials.

    Scene records stay units of one. Regular records are bucketed by pool and by their rank
    among the same material's records, so no group holds a material twice; each bucket is
    shuffled by its own generator and cut into groups (the last one may be smaller).
    """
    size = spec.hard_negatives.group_size
    units: list[list[dict]] = []
    buckets: dict[tuple[str, int], list[dict]] = {}
    rank: dict[tuple[str, str], int] = {}
    for record in samples:
        if "scene" in record:
            units.append([record])
            continue
        seen = (record["pool"], record["material"])
        buckets.setdefault((record["pool"], rank.get(seen, 0)), []).append(record)
        rank[seen] = rank.get(seen, 0) + 1
    for (pool, bucket), records in sorted(buckets.items()):
        rng = np.random.default_rng(
            [spec.dataset.seed, HARD_NEGATIVE_SALT, generation, digest(pool), bucket]
        )
        records = [records[i] for i in rng.permutation(len(records))]
        units += [records[i : i + size] for i in range(0, len(records), size)]
    return units


def pack_shards(unit_sizes: list[int], shard_size: int) -> list[int]:
    """Sample counts of consecutive shards holding units of ``unit_sizes``, in order.

    A unit never straddles two shards when it fits in one: a shard without room for the next
    unit ends early. A unit longer than ``shard_size`` starts a new shard and runs on.
    """
    sizes: list[int] = []
    room = 0
    for n in unit_sizes:
        if room < n:
            room = 0  # the unit does not fit the current shard: end it here
        while n:
            if room == 0:
                sizes.append(0)
                room = shard_size
            take = min(n, room)
            sizes[-1] += take
            room -= take
            n -= take
    return sizes
