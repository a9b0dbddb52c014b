"""Deterministic planner: spec + catalogs -> shards -> samples -> view jobs.

The same spec and catalogs always give the same plan, byte for byte. A plan is made of
*generations*: the first build of a dataset version draws generation 0 from the catalogs; a
later build, after catalogs grew, adds a generation holding only the new materials (and,
with ``resample_on_growth``, extra samples of old materials drawn with the new meshes and
lights) in new shards. Each generation stores a snapshot of the catalog entries it was drawn
from inside the dataset version (``plan/gen-0000.json``), and shards of old generations are
always re-planned from their own snapshot, so growing a catalog never changes an existing
shard's plan or plan hash.

Randomness is explicit: every sample has its own ``numpy.random.Generator`` seeded from the
spec seed and the sample key, so a sample's views do not depend on which other materials
exist. Each view draws a different mesh and light from its siblings while the pools have
enough entries, then starts repeating.

Material-selection scenes (the spec's ``[scenes]``) are planned with the first generation:
scene ``s`` draws its materials with its own generator (seed, ``s``) and becomes one sample
keyed by its first material, group ``max(SCENE_GROUP_BASE, samples_per_material) + s`` (so
never a regular sample's group), whose V views show the same arrangement of objects from
different cameras and lights. Hard cases are drawn on purpose:
an object may repeat a material already in the scene, or get a material of another family
whose ``base_color`` is overridden to match one already there (``colour_match`` in the
entry records the source material and both colours). Specs without scenes plan exactly
as before.

Hard-negative groups (the spec's ``[hard_negatives] group_size = k``, 0 = off) are drawn per
generation: its regular samples are bucketed by pool and by how many samples of the same
material came before (so a bucket holds each material at most once: bucket ``g`` is sample
``g`` of every fresh material), each bucket is shuffled with its own generator (seed,
generation, pool, bucket) and cut into groups of ``k`` (the last one may be smaller). A group
is shuffled into the generation as one unit, so its members are consecutive, and shards are
packed with whole groups: a shard that has no room for the next group ends early (a group
longer than ``shard_size`` starts a shard and runs on into the next). Group ``n`` of
generation ``G`` (numbered in shard order) is ``hn-GGGG-NNNNNN``, stored in each member's
snapshot record and sample json as ``hard_negative_group``. Its members' views are drawn from
one generator seeded by the group id: view ``i`` has the same mesh, light, light rotation and
strength, camera and background for every member; only the material, key and render seed
(from the member's own generator) differ. The snapshot stores the shard sizes
(``shard_sizes``). Specs without hard negatives plan exactly as before.

    python -m render plan manifests/tiny.toml            # summary of the plan
    python -m render plan manifests/tiny.toml --json     # the full plan, every view job
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assets.catalog import PathEscapeError, asset_path
from phieat.schema import (
    HARD_NEGATIVE_GROUP,
    IMAGE_FORMATS,
    SCHEMA_VERSION,
    SchemaError,
    canonical_json,
    hash_obj,
    make_key,
    shard_name,
    validate_material_id,
)
from render.spec import Spec

CATALOG_KINDS = ("materials", "meshes", "lights")
REQUIRED_FIELDS = {
    "materials": ("id", "category", "source", "licence", "group", "split"),
    "meshes": ("id", "kind", "params", "size_m", "group", "split", "licence"),
    "lights": ("id", "kind", "params", "group", "split", "licence"),
}
SNAPSHOT_DIR = "plan"
SCENE_GROUP_BASE = 1000
SCENE_SALT = 104729
HARD_NEGATIVE_SALT = 130363
# Scene objects stand centred at z = 0 and turn only about Z, so two can only meet where their
# footprints do; the footprint of a box whose largest side is 1 fits in a circle of radius
# 1 / sqrt(2), whatever its turn.
RADIUS_PER_SIZE = 0.71


class PlanError(ValueError):
    """Catalogs or a spec that cannot be planned; the message names the file or key."""


# ----------------------------------------------------------------------------- catalogs


@dataclass(frozen=True)
class Catalogs:
    """The three catalogs as lists of entries sorted by id, with a content hash of each file."""

    materials: list[dict]
    meshes: list[dict]
    lights: list[dict]
    hashes: dict[str, str]


def load_catalog(path: str | Path, kind: str) -> list[dict]:
    """Read one JSONL catalog, checking each entry's required fields and unique IDs."""
    path = Path(path)
    if not path.exists():
        raise PlanError(
            f"catalog {path} does not exist: point [catalogs].{kind} of the spec at the "
            "catalog file (a path relative to the spec's folder, or an absolute path)"
        )
    entries: list[dict] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(entry, dict):
            raise PlanError(f"{where} must be a JSON object")
        for name in REQUIRED_FIELDS[kind]:
            if name not in entry:
                raise PlanError(f"{where}: entry {entry.get('id', '?')!r} is missing {name!r}")
        try:
            validate_material_id(entry["id"])
        except SchemaError as exc:
            raise PlanError(f"{where}: {exc}") from exc
        if entry["id"] in seen:
            raise PlanError(f"{where}: id {entry['id']!r} appears twice")
        if kind == "materials" and entry["source"] == "procedural" and "family" not in entry:
            raise PlanError(f"{where}: procedural material {entry['id']!r} has no 'family'")
        for ref in _file_refs(entry, kind):
            try:
                asset_path(ref, path.parent)
            except PathEscapeError as exc:
                raise PlanError(f"{where}: entry {entry['id']!r}: {exc}") from exc
        seen.add(entry["id"])
        entries.append(entry)
    return sorted(entries, key=lambda e: e["id"])


def _file_refs(entry: dict, kind: str) -> list[str]:
    """The files an entry names: texture maps, an HDRI, a mesh file (bundled HDRIs aside)."""
    if kind == "materials":
        maps = entry.get("maps")
        return [v for v in maps.values() if isinstance(v, str)] if isinstance(maps, dict) else []
    ref = entry.get("path")
    if not isinstance(ref, str) or ref.startswith("bpy:"):
        return []
    return [ref]


def _missing_catalog(spec: Spec, kind: str) -> str:
    """Where a missing catalog was looked for and how to point the spec at it."""
    raw = getattr(spec.catalogs, kind)
    looked = spec.catalog_path(kind)
    folder = Path(spec.path).resolve().parent
    text = f"{spec.path}: [catalogs].{kind} = {raw!r} does not exist: looked at {looked}" + (
        "" if Path(raw).is_absolute() else f" (relative to the spec's folder {folder})"
    )
    # A spec copied out of manifests/ still names the catalogs beside the original.
    for candidate in (Path.cwd() / raw, Path.cwd() / "manifests" / Path(raw).name):
        if candidate.is_file():
            rel = Path(os.path.relpath(candidate.resolve(), folder)).as_posix()
            return (
                f"{text}. {candidate} exists: set [catalogs].{kind} = {rel!r} in the spec "
                f"(or --set catalogs.{kind}={str(candidate.resolve())!r})"
            )
    return (
        f"{text}. Set [catalogs].{kind} to the catalog's path relative to the spec's folder, "
        "or to an absolute path"
    )


def load_catalogs(spec: Spec) -> Catalogs:
    for kind in CATALOG_KINDS:
        if spec.path and not spec.catalog_path(kind).exists():
            raise PlanError(_missing_catalog(spec, kind))
    lists = {kind: load_catalog(spec.catalog_path(kind), kind) for kind in CATALOG_KINDS}
    hashes = {
        kind: hashlib.sha256(spec.catalog_path(kind).read_bytes()).hexdigest()[:16]
        for kind in CATALOG_KINDS
    }
    return Catalogs(hashes=hashes, **lists)


def _splits(selected: list[str]) -> set[str] | None:
    return None if "all" in selected else set(selected)


def _select(spec: Spec, catalogs: Catalogs) -> tuple[list[dict], list[dict], list[dict]]:
    """Entries of the spec's splits (and categories); errors name the empty catalog."""
    c = spec.catalogs
    mat_splits = _splits(c.split)
    mesh_splits = _splits(c.mesh_split or c.split)
    light_splits = _splits(c.light_split or c.split)

    def keep(entries: list[dict], splits: set[str] | None) -> list[dict]:
        return [e for e in entries if splits is None or e["split"] in splits]

    materials = keep(catalogs.materials, mat_splits)
    if c.categories:
        materials = [m for m in materials if m["category"] in set(c.categories)]
    meshes = keep(catalogs.meshes, mesh_splits)
    lights = keep(catalogs.lights, light_splits)
    for kind, entries, key, splits in (
        ("meshes", meshes, "mesh_split", mesh_splits),
        ("lights", lights, "light_split", light_splits),
    ):
        if not entries:
            raise PlanError(
                f"{spec.catalog_path(kind)} has no entry in split {sorted(splits or ['all'])}"
                f': set [catalogs].{key} (e.g. "all") in {spec.path or "the spec"}'
            )
    return materials, meshes, lights


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


# ----------------------------------------------------------------------------- hard negatives


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
            [spec.dataset.seed, HARD_NEGATIVE_SALT, generation, _digest(pool), bucket]
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


# ----------------------------------------------------------------------------- scenes


def draw_scenes(spec: Spec, materials: list[dict]) -> list[dict]:
    """The snapshot records of the spec's selection scenes: which material each object has.

    Object 0 is the scene's key material. Each further object repeats a material already in
    the scene with chance ``same_material_pairs`` (never leaving the scene with a single
    material), gets a colour-matched material of another family with chance
    ``same_colour_pairs``, else a material not yet in the scene.
    """
    sc = spec.scenes
    if not materials:
        return []
    by_id = {m["id"]: m for m in materials}
    coloured = [m for m in materials if _base_color(m) is not None]
    out = []
    for s in range(sc.count):
        rng = np.random.default_rng([spec.dataset.seed, SCENE_SALT, s])
        n = int(rng.integers(sc.objects[0], sc.objects[1] + 1))
        objects = [{"material": materials[int(rng.integers(len(materials)))]["id"]}]
        for i in range(1, n):
            distinct = {_object_key(o) for o in objects}
            u = float(rng.random())
            pick: dict | None = None
            if u < sc.same_material_pairs and (len(distinct) >= 2 or i < n - 1):
                pick = dict(objects[int(rng.integers(len(objects)))])
            elif u < sc.same_material_pairs + sc.same_colour_pairs:
                pick = _colour_partner(rng, objects, by_id, coloured)
            if pick is None:
                in_scene = {o["material"] for o in objects}
                free = [m for m in materials if m["id"] not in in_scene] or materials
                pick = {"material": free[int(rng.integers(len(free)))]["id"]}
            objects.append(pick)
        if len({_object_key(o) for o in objects}) < 2:
            continue  # a one-material catalog: no selection scene can be made
        group = max(SCENE_GROUP_BASE, spec.dataset.samples_per_material) + s
        out.append(
            {
                "material": objects[0]["material"],
                "group": group,
                "pool": "all",
                "scene": {"index": s, "objects": objects},
            }
        )
    return out


def _base_color(entry: dict) -> list[float] | None:
    color = (entry.get("params") or {}).get("base_color")
    if isinstance(color, list) and len(color) in (3, 4):
        return [float(c) for c in color[:3]]
    return None


def _digest(text: str) -> int:
    """A stable 64-bit integer of ``text`` (a seed part)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _object_key(obj: dict) -> str:
    return hash_obj(obj)


def _colour_partner(
    rng: np.random.Generator, objects: list[dict], by_id: dict[str, dict], coloured: list[dict]
) -> dict | None:
    """A material of another family with its base colour set to one already in the scene."""
    sources = [o for o in objects if _base_color(_scene_entry(o, by_id)) is not None]
    if not sources:
        return None
    source = sources[int(rng.integers(len(sources)))]
    src_entry = _scene_entry(source, by_id)
    in_scene = {o["material"] for o in objects}
    family = src_entry.get("family")
    candidates = [m for m in coloured if m["id"] not in in_scene and m.get("family") != family]
    if not candidates:
        return None
    partner = candidates[int(rng.integers(len(candidates)))]
    return {
        "material": partner["id"],
        "colour_match": {
            "source": source["material"],
            "base_color": _base_color(src_entry),
            "original_base_color": _base_color(partner),
        },
    }


def _scene_entry(obj: dict, by_id: dict[str, dict]) -> dict:
    """The material entry of a scene object, with its colour override applied."""
    entry = by_id[obj["material"]]
    match = obj.get("colour_match")
    if not match:
        return entry
    entry = json.loads(json.dumps(entry))
    entry["params"]["base_color"] = list(match["base_color"])
    entry["colour_match"] = dict(match)
    return entry


def _layout(rng: np.random.Generator, sizes: list[float]) -> list[dict]:
    """Objects on a ring about the origin, far enough apart that their footprints never
    meet. Locations in metres. Objects keep their real size (so textures keep their physical
    scale) unless it is more than twice or less than half the first one's: then they are
    scaled to that bound."""
    n = len(sizes)
    scales = [1.0] + [
        round(float(np.clip(sizes[i] / sizes[0], 0.5, 2.0)) * sizes[0] / sizes[i], 4)
        for i in range(1, n)
    ]
    radii = [RADIUS_PER_SIZE * sizes[i] * scales[i] for i in range(n)]
    step = 2 * np.pi / n
    jitter = 0.15 * step
    angles = float(rng.uniform(0, 2 * np.pi)) + step * np.arange(n)
    angles = angles + rng.uniform(-jitter, jitter, size=n)
    # Neighbours are at least (step - 2 * jitter) apart in angle; their chord must hold
    # both spheres with a small gap.
    need = max(radii[i] + radii[(i + 1) % n] for i in range(n)) * 1.08
    ring = need / (2 * np.sin((step - 2 * jitter) / 2))
    return [
        {
            "location": [
                round(float(ring * np.cos(a)), 4),
                round(float(ring * np.sin(a)), 4),
                0.0,
            ],
            "rotation_z": round(float(rng.uniform(0, 360)), 2),
            "scale": scales[i],
        }
        for i, a in enumerate(angles)
    ]


def plan_scene(
    spec: Spec,
    record: dict,
    materials: dict[str, dict],
    meshes: list[dict],
    lights: list[dict],
) -> dict[str, Any]:
    """One selection-scene sample: V views of one arrangement of objects (see ``draw_scenes``)."""
    entries = [_scene_entry(o, materials) for o in record["scene"]["objects"]]
    key = make_key(entries[0]["id"], record["group"])
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([spec.dataset.seed, SCENE_SALT, digest])
    n = len(entries)
    views = spec.dataset.views
    mesh_list = [meshes[i] for i in _distinct(rng, len(meshes), n)]
    placement = _layout(rng, [float(m.get("size_m", 1.0)) for m in mesh_list])
    light_idx = _distinct(rng, len(lights), views)
    render = _render_record(spec)
    scene = {
        **placement[0],
        "objects": [
            {"material": entries[i], "mesh": mesh_list[i], **placement[i]} for i in range(1, n)
        ],
    }
    distinct: list[dict] = []
    for entry in entries:
        if entry not in distinct:
            distinct.append(entry)
    jobs = []
    for v in range(views):
        job = _view_job(
            spec,
            rng,
            key,
            v,
            entries[0],
            mesh_list[0],
            lights[light_idx[v]],
            render,
            spec.scenes.distance,
        )
        job["scene"] = scene
        jobs.append(job)
    return {"key": key, "material": entries[0], "views": jobs, "scene_materials": distinct}


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


def _uniform(rng: np.random.Generator, lo_hi: list[float]) -> float:
    lo, hi = lo_hi
    return round(float(rng.uniform(lo, hi)) if hi > lo else float(lo), 3)


def _distinct(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` indices into ``n`` entries, all different while ``k <= n``, then repeating."""
    out: list[int] = []
    while len(out) < k:
        take = min(n, k - len(out))
        out.extend(int(i) for i in rng.choice(n, size=take, replace=False))
    return out


def _background_color(spec: Spec, rng: np.random.Generator) -> list[float]:
    """A view's background colour: drawn from ``rng`` in "random" mode, else the spec's."""
    if spec.render.background == "random":
        return [round(float(c), 3) for c in rng.uniform(0.05, 0.95, size=3)]
    return [float(c) for c in spec.render.background_color]


def _view_job(
    spec: Spec,
    rng: np.random.Generator,
    key: str,
    view: int,
    material: dict,
    mesh: dict,
    light: dict,
    render: dict[str, Any],
    distance: list[float],
) -> dict[str, Any]:
    """One view job; draws from ``rng`` in a fixed order (plans depend on it)."""
    color = _background_color(spec, rng)
    return {
        "key": key,
        "view": view,
        "material": material,
        "mesh": mesh,
        "light": light,
        "light_rotation": _uniform(rng, spec.lighting.rotation),
        "light_strength": _uniform(rng, spec.lighting.strength),
        "camera": {
            "distance": _uniform(rng, distance),
            "elevation": _uniform(rng, spec.camera.elevation),
            "azimuth": _uniform(rng, spec.camera.azimuth),
            "lens_mm": _uniform(rng, spec.camera.lens_mm),
        },
        "background": {"mode": spec.render.background, "color": color},
        "render": render,
        "seed": int(rng.integers(0, 2**31 - 1)),
    }


def _render_record(spec: Spec) -> dict[str, Any]:
    r = spec.render
    return {
        "resolution": r.resolution,
        "samples": r.samples,
        "denoise": r.denoise,
        "bounces": r.bounces,
        "view_transform": r.view_transform,
        "image_format": r.image_format,
        "jpeg_quality": r.jpeg_quality,
        "passes": list(r.passes),
    }


def plan_sample(
    spec: Spec,
    material: dict,
    group: int,
    meshes: list[dict],
    lights: list[dict],
    hard_negative_group: str | None = None,
) -> dict[str, Any]:
    """One sample: V view jobs of ``material``, drawn with the sample's own seeded generator.

    A member of a hard-negative group draws its views from the group's generator instead, so
    all members see the same meshes, lights, cameras and backgrounds; its render seeds still
    come from its own generator.
    """
    key = make_key(material["id"], group)
    rng = np.random.default_rng([spec.dataset.seed, _digest(key)])
    own = rng
    if hard_negative_group:
        rng = np.random.default_rng(
            [spec.dataset.seed, HARD_NEGATIVE_SALT, _digest(hard_negative_group)]
        )
    views = spec.dataset.views
    mesh_idx = _distinct(rng, len(meshes), views)
    light_idx = _distinct(rng, len(lights), views)
    render = _render_record(spec)
    jobs = [
        _view_job(
            spec,
            rng,
            key,
            v,
            material,
            meshes[mesh_idx[v]],
            lights[light_idx[v]],
            render,
            spec.camera.distance,
        )
        for v in range(views)
    ]
    if not hard_negative_group:
        return {"key": key, "material": material, "views": jobs}
    for job in jobs:
        job["seed"] = int(own.integers(0, 2**31 - 1))
    return {
        "key": key,
        "material": material,
        "views": jobs,
        HARD_NEGATIVE_GROUP: hard_negative_group,
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


# ----------------------------------------------------------------------------- estimate

# Cost model in core-seconds per image: the CPU time Blender and the build spend on one view,
# which is what a Ray pool that keeps every core busy needs in cores x wall-clock seconds.
# Fitted on 2026-12-02 on a shared 2-core x86 machine (AMD EPYC, 1 thread per core, bpy 5.0.1)
# from the user CPU time (getrusage) of local builds with one 1-thread BlenderSession started
# beforehand, the shipped catalogs, 4 materials x 3 views per build with manifests/tiny.toml's
# camera, every view on another mesh and HDRI, 3 plan seeds, 3-8 runs per setting (user core-s
# per image, mean and range; the model's value after the arrow):
#    32 px / 16 samples:   0.115 (0.10-0.13) -> 0.13    + denoiser: 0.18 (0.15-0.20) -> 0.20
#    64 px / 16 samples:   0.31  (0.28-0.33) -> 0.29    + denoiser: 0.41 (0.34-0.49) -> 0.42
#   128 px / 16 samples:   0.93  (0.78-1.08) -> 0.92    + denoiser: 1.20 (1.09-1.29) -> 1.30
# and the demo's training views (manifests/loop-train.toml: 64 px / 16 samples + denoiser,
# closer camera), 8 runs of 3 materials x 4 views: 0.46 (0.33-0.54) -> 0.42.
# System time is left out: while the one Cycles thread renders, Blender's idle worker threads
# yield the CPU in a loop, which costs up to 0.3 s of system time per 64 px view when a core is
# idle and almost nothing when the machine is busy; it is not work a full pool pays for.
# Path tracing scales with pixels x samples (3.2e-6 core-s per pixel-sample). The fixed part
# per view (0.08 core-s) is scene sync, building the view's mesh and material, pass I/O,
# compositing and encoding, measured without any cache of meshes or materials across views:
# with 3-12 views per shard nearly every view builds its own mesh. A cache that reuses them
# lowers this term; refit it then. OpenImageDenoise adds a start-up cost plus a cost per pixel.
# Against the pool benchmark of docs/cluster.md (cores x wall-clock, 2-thread actors included):
# 128 px / 16 samples 0.90-1.13 (model 0.92), 256 px / 32 samples 5.65-6.17 (model 6.8), and
# the README's demo, 4-6 images/s on 2 idle cores at 64 px / 16 samples + denoiser: 0.33-0.50
# (model 0.42). On other hardware use `plan --estimate --core-s-per-image X` with a number
# from bench/render_bench.py. tests/faults/test_render_faults.py checks the model against a
# small real build (within 30 %).
CORE_S_PER_PIXEL_SAMPLE = 3.2e-6
CORE_S_FIXED_PER_VIEW = 0.08
CORE_S_DENOISE_FIXED = 0.05
CORE_S_DENOISE_PER_PIXEL = 2.0e-5
BYTES_PER_PIXEL = {"jpg": 0.35, "png": 1.3, "png16": 3.2, "exr": 4.5}
PASS_BYTES_PER_PIXEL = {"mask": 0.04, "matid": 0.06}
TAR_MEMBER_OVERHEAD = 768  # header plus average padding


def model_core_s_per_image(resolution: int, samples: int, denoise: bool) -> float:
    """The model's core-seconds per image at these render settings (see above): the CPU time
    of rendering, building the scene of and encoding one view, Blender's start-up excluded."""
    pixels = resolution * resolution
    cost = CORE_S_FIXED_PER_VIEW + CORE_S_PER_PIXEL_SAMPLE * pixels * samples
    if denoise:
        cost += CORE_S_DENOISE_FIXED + CORE_S_DENOISE_PER_PIXEL * pixels
    return cost


def estimate(
    plan: Plan,
    shards: list[ShardPlan] | None = None,
    core_s_per_image: float | None = None,
    cores: int | None = None,
) -> dict[str, Any]:
    """Expected images, core-hours, wall-clock time on ``cores`` cores (default: this
    machine's) and bytes of ``shards`` (default: the whole plan)."""
    shards = plan.shards if shards is None else shards
    r = plan.spec.render
    pixels = r.resolution * r.resolution
    if core_s_per_image is None:
        core_s_per_image = model_core_s_per_image(r.resolution, r.samples, r.denoise)
    cores = int(cores or os.cpu_count() or 1)
    if cores < 1:
        raise PlanError(f"cores must be >= 1, got {cores}")
    images = sum(s.num_images for s in shards)
    samples = sum(len(s.samples) for s in shards)
    members_per_view = 1 + len(r.passes)
    per_view = BYTES_PER_PIXEL[r.image_format] * pixels + sum(
        PASS_BYTES_PER_PIXEL[p] * pixels for p in r.passes
    )
    total_bytes = images * (per_view + members_per_view * TAR_MEMBER_OVERHEAD) + samples * (
        1200 * plan.spec.dataset.views + TAR_MEMBER_OVERHEAD
    )
    return {
        "shards": len(shards),
        "samples": samples,
        "images": images,
        "core_s_per_image": round(core_s_per_image, 4),
        "core_hours": round(images * core_s_per_image / 3600.0, 3),
        "cores": cores,
        "wall_s": round(images * core_s_per_image / cores, 1),
        "bytes": int(total_bytes),
        "image_format": r.image_format,
        "extension": IMAGE_FORMATS[r.image_format],
    }


def format_bytes(n: float) -> str:
    """``512 B``, ``3.4 MB``, ``1.25 GB``, ``2.0 TB`` (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_estimate(est: dict[str, Any], spec: Spec) -> str:
    """The estimate as ``plan --estimate`` prints it (before the shard listing)."""
    r = spec.render
    denoise = " + denoiser" if r.denoise else ""
    return (
        f"estimate: {est['images']} images in {est['shards']} shards, about "
        f"{format_duration(est['wall_s'])} on {est['cores']} cores "
        f"({est['core_hours']:.3g} core-hours, {est['core_s_per_image']:.2f} core-s per image "
        f"at {r.resolution} px / {r.samples} samples{denoise}), "
        f"{format_bytes(est['bytes'])} of {est['image_format']} shards"
    )


def describe(plan: Plan, shards: list[ShardPlan] | None = None, max_shards: int = 20) -> str:
    """A human-readable summary: one line per shard, then totals."""
    shards = plan.shards if shards is None else shards
    lines = []
    for shard in shards[:max_shards]:
        keys = ", ".join(s["key"] for s in shard.samples[:3])
        more = f", ... (+{len(shard.samples) - 3})" if len(shard.samples) > 3 else ""
        lines.append(
            f"{shard.name}  gen {shard.generation}  {len(shard.samples):4d} samples  "
            f"{shard.num_images:5d} images  plan {shard.plan_hash}  [{keys}{more}]"
        )
    if len(shards) > max_shards:
        lines.append(f"... {len(shards) - max_shards} more shards")
    lines.append(
        f"{len(shards)} shards, {sum(len(s.samples) for s in shards)} samples, "
        f"{sum(s.num_images for s in shards)} images"
    )
    return "\n".join(lines)
