"""Deterministic planner: spec + catalogs -> shards -> samples -> view jobs.

The same spec and catalogs always give the same plan, byte for byte. A plan is made of
*generations*: the first build of a dataset version draws generation 0 from the catalogs; a
later build, after catalogs grew, adds a generation holding only the new materials (and,
with ``resample_on_growth``, extra samples of old materials drawn with the new meshes and
lights) in new shards. Each generation stores a snapshot of the catalog entries it was drawn
from inside the dataset version (``plan/gen-0000.json``), and shards of old generations are
always re-planned from their own snapshot, so growing a catalog never changes an existing
shard's plan or plan hash.

This module holds the generations, the shards and ``make_plan``; its parts live beside it:

* ``render.catalogs``: loading and selecting catalog entries (re-exported here);
* ``render.views``: one sample's view jobs, each sample drawn with its own seeded generator;
* ``render.scenes``: material-selection scenes (the spec's ``[scenes]``), planned with the
  first generation. Specs without scenes plan exactly as before;
* ``render.negatives``: hard-negative groups (the spec's ``[hard_negatives]``);
* ``render.estimate``: what a plan costs, and its summary.

Hard-negative groups are shuffled into their generation as one unit each, so their members
are consecutive, and shards are packed with whole groups: a shard that has no room for the
next group ends early (a group longer than ``shard_size`` starts a shard and runs on into
the next). Group ``n`` of generation ``G`` (numbered in shard order) is ``hn-GGGG-NNNNNN``,
stored in each member's snapshot record and sample json as ``hard_negative_group``. The
snapshot stores the shard sizes (``shard_sizes``). Specs without hard negatives plan
exactly as before.

    python -m render plan manifests/tiny.toml            # summary of the plan
    python -m render plan manifests/tiny.toml --json     # the full plan, every view job
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phieat.schema import (
    HARD_NEGATIVE_GROUP,
    SCHEMA_VERSION,
    canonical_json,
    hash_obj,
    shard_name,
)
from render.catalogs import CATALOG_KINDS, Catalogs, _select

# Re-exported: callers load the catalogs they plan from through the planner.
from render.catalogs import load_catalog as load_catalog
from render.catalogs import load_catalogs as load_catalogs
from render.errors import PlanError
from render.negatives import hard_negative_groups, pack_shards
from render.scenes import draw_scenes, plan_scene
from render.spec import Spec
from render.views import plan_sample

SNAPSHOT_DIR = "plan"


# ----------------------------------------------------------------------------- generations


def blender_version_tag(version: str) -> str:
    """``'5.0.1'`` from e.g. ``'5.0.1'`` or ``'Blender 5.0.1 (hash abc)'``; other text as is."""
    match = re.search(r"\d+\.\d+(?:\.\d+)?", version)
    return match.group(0) if match else version.strip()


def dataset_version(spec: Spec, blender_version: str) -> str:
    """Name of the version folder: a hash of the render settings, seed and Blender version."""
    return "v-" + hash_obj(
        {
            "schema_version": SCHEMA_VERSION,
            "settings": spec.render_settings(),
            "blender": blender_version_tag(blender_version),
        },
        length=12,
    )


def snapshot_name(generation: int) -> str:
    return f"gen-{generation:04d}.json"


def _entries_hash(entries: list[dict]) -> str:
    return hash_obj(entries)


def new_generation(
    spec: Spec, catalogs: Catalogs, previous: list[dict], failed: set[str] | None = None
) -> dict | None:
    """The next generation's snapshot, or ``None`` when the catalogs add nothing to plan.

    ``failed`` are material IDs recorded as failed in published shards: one whose catalog
    entry has changed since it was planned (the fix) gets a new sample in this generation.
    """
    materials, meshes, lights = _select(spec, catalogs)
    generation = len(previous)
    planned: dict[str, int] = {}
    regular: set[str] = set()  # materials with a sample of their own (not only a scene)
    last_entry: dict[str, dict] = {}
    seen_meshes: set[str] = set()
    seen_lights: set[str] = set()
    for snap in previous:
        for sample in snap["samples"]:
            planned[sample["material"]] = max(planned.get(sample["material"], -1), sample["group"])
            if "scene" not in sample:
                regular.add(sample["material"])
        last_entry.update({m["id"]: m for m in snap["materials"]})
        seen_meshes.update(snap["pools"]["all"]["meshes"])
        seen_lights.update(snap["pools"]["all"]["lights"])

    fresh = [m for m in materials if m["id"] not in regular]
    if spec.dataset.max_materials:
        room = max(0, spec.dataset.max_materials - len(regular))
        # A seeded order picks which materials fit, independent of catalog file order.
        fresh = sorted(fresh, key=lambda m: hash_obj([spec.dataset.seed, m["id"]]))[:room]
        fresh.sort(key=lambda m: m["id"])
    samples = [
        {"material": m["id"], "group": g, "pool": "all"}
        for m in fresh
        for g in range(spec.dataset.samples_per_material)
    ]
    samples += [
        {"material": m["id"], "group": planned[m["id"]] + 1, "pool": "all"}
        for m in materials
        if m["id"] in (failed or set()) and m["id"] in planned and m != last_entry.get(m["id"])
    ]
    new_meshes = [m for m in meshes if m["id"] not in seen_meshes]
    new_lights = [m for m in lights if m["id"] not in seen_lights]
    pool_new = None
    if previous and spec.dataset.resample_on_growth and (new_meshes or new_lights):
        pool_new = {
            "meshes": [m["id"] for m in (new_meshes or meshes)],
            "lights": [m["id"] for m in (new_lights or lights)],
        }
        by_id = {m["id"]: m for m in materials}
        samples += [
            {"material": mid, "group": group + 1, "pool": "new"}
            for mid, group in sorted(planned.items())
            if mid in by_id
        ]
    if not previous and spec.scenes.count:
        samples += draw_scenes(spec, materials)
    if not samples:
        return None
    group_size = spec.hard_negatives.group_size
    # Units are shuffled whole: single samples, or hard-negative groups kept together.
    units = (
        hard_negative_groups(spec, generation, samples) if group_size else [[s] for s in samples]
    )
    order = np.random.default_rng([spec.dataset.seed, 7919, generation]).permutation(len(units))
    units = [units[i] for i in order]
    shard_sizes = None
    if group_size:
        grouped = [unit for unit in units if "scene" not in unit[0]]
        for n, unit in enumerate(grouped):
            for record in unit:
                record[HARD_NEGATIVE_GROUP] = f"hn-{generation:04d}-{n:06d}"
        shard_sizes = pack_shards([len(unit) for unit in units], spec.dataset.shard_size)
    samples = [record for unit in units for record in unit]
    first_shard = sum(snap["num_shards"] for snap in previous)
    used = {s["material"] for s in samples}
    used |= {o["material"] for s in samples for o in s.get("scene", {}).get("objects", [])}
    pools = {"all": {"meshes": [m["id"] for m in meshes], "lights": [m["id"] for m in lights]}}
    if pool_new:
        pools["new"] = pool_new
    material_entries = [m for m in materials if m["id"] in used]
    snapshot = {
        "generation": generation,
        "first_shard": first_shard,
        "num_shards": -(-len(samples) // spec.dataset.shard_size),
        "shard_size": spec.dataset.shard_size,
        "catalog_hashes": dict(catalogs.hashes),
        "materials": material_entries,
        "meshes": meshes,
        "lights": lights,
        "pools": pools,
        "samples": samples,
    }
    if shard_sizes is not None:
        snapshot["num_shards"] = len(shard_sizes)
        snapshot["shard_sizes"] = shard_sizes
    return snapshot


# ----------------------------------------------------------------------------- shards


@dataclass
class ShardPlan:
    """One shard: its samples (each with V view jobs), plan hash and catalog snapshot."""

    index: int
    name: str
    generation: int
    samples: list[dict]
    catalog_snapshot: dict
    plan_hash: str = ""

    @property
    def num_images(self) -> int:
        return sum(len(s["views"]) for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "generation": self.generation,
            "plan_hash": self.plan_hash,
            "catalog_snapshot": self.catalog_snapshot,
            "samples": self.samples,
        }


def shards_of(spec: Spec, snapshot: dict) -> list[ShardPlan]:
    """Re-plan every shard of one generation from its stored snapshot (never the live catalog)."""
    materials = {m["id"]: m for m in snapshot["materials"]}
    meshes = {m["id"]: m for m in snapshot["meshes"]}
    lights = {m["id"]: m for m in snapshot["lights"]}
    pools = {
        name: ([meshes[i] for i in pool["meshes"]], [lights[i] for i in pool["lights"]])
        for name, pool in snapshot["pools"].items()
    }
    ref = {
        "generation": snapshot["generation"],
        "materials": _entries_hash(snapshot["materials"]),
        "meshes": _entries_hash(snapshot["meshes"]),
        "lights": _entries_hash(snapshot["lights"]),
        "counts": {k: len(snapshot[k]) for k in CATALOG_KINDS},
        "catalog_hashes": snapshot["catalog_hashes"],
    }
    size = snapshot["shard_size"]
    # Shards hold shard_size samples each, unless hard-negative groups packed them.
    sizes = snapshot.get("shard_sizes") or [size] * snapshot["num_shards"]
    starts = [0, *itertools.accumulate(sizes)]
    shards = []
    for k in range(snapshot["num_shards"]):
        chunk = snapshot["samples"][starts[k] : starts[k + 1]]
        samples = [
            plan_scene(spec, s, materials, *pools[s["pool"]])
            if "scene" in s
            else plan_sample(
                spec,
                materials[s["material"]],
                s["group"],
                *pools[s["pool"]],
                s.get(HARD_NEGATIVE_GROUP),
            )
            for s in chunk
        ]
        index = snapshot["first_shard"] + k
        shard = ShardPlan(index, shard_name(index), snapshot["generation"], samples, ref)
        shard.plan_hash = hash_obj(
            {"shard": shard.name, "samples": samples, "snapshot": ref}, length=16
        )
        shards.append(shard)
    return shards


@dataclass
class Plan:
    """All generations of a dataset version; ``new`` is the generation this run would add."""

    spec: Spec
    generations: list[dict]
    new: dict | None
    shards: list[ShardPlan] = field(default_factory=list)

    @property
    def new_shards(self) -> list[ShardPlan]:
        if self.new is None:
            return []
        return [s for s in self.shards if s.generation == self.new["generation"]]

    @property
    def num_samples(self) -> int:
        return sum(len(s.samples) for s in self.shards)

    @property
    def num_images(self) -> int:
        return sum(s.num_images for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.spec.dataset.name,
            "spec_hash": self.spec.spec_hash(),
            "spec": self.spec.render_settings(),
            "generations": len(self.generations),
            "shards": [s.to_dict() for s in self.shards],
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the whole plan: equal plans give equal bytes."""
        return (canonical_json(self.to_dict()) + "\n").encode("utf-8")


def make_plan(
    spec: Spec,
    catalogs: Catalogs,
    previous: list[dict] | None = None,
    failed: set[str] | None = None,
) -> Plan:
    """Plan a dataset version: the ``previous`` generations' snapshots plus what is new.

    ``failed``: material IDs recorded as failed in published shards (see ``new_generation``).
    """
    previous = list(previous or [])
    for i, snap in enumerate(previous):
        if snap.get("generation") != i:
            raise PlanError(f"plan snapshot {snapshot_name(i)} is missing or out of order")
    new = new_generation(spec, catalogs, previous, failed)
    generations = previous + ([new] if new else [])
    if not generations:
        raise PlanError(
            f"nothing to plan: no material of split {spec.catalogs.split} in "
            f"{spec.catalog_path('materials')}"
        )
    shards = [shard for snap in generations for shard in shards_of(spec, snap)]
    return Plan(spec=spec, generations=generations, new=new, shards=shards)
