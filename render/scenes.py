"""Material-selection scenes (the spec's ``[scenes]``): which materials a scene holds and
how its objects stand.

Scenes are planned with the first generation (``render.plan``): scene ``s`` draws its
materials with its own generator (seed, ``s``) and becomes one sample keyed by its first
material, group ``max(SCENE_GROUP_BASE, samples_per_material) + s`` (so never a regular
sample's group), whose V views show the same arrangement of objects from different cameras
and lights. Hard cases are drawn on purpose: an object may repeat a material already in the
scene, or get a material of another family whose ``base_color`` is overridden to match one
already there (``colour_match`` in the entry records the source material and both
colours). ``draw_scenes`` makes the snapshot records; ``plan_scene`` turns one record into
its view jobs (``render.views``). Scene views render at ``[scenes].resolution`` when the
spec sets one (``Spec.scene_resolution``), else at ``[render].resolution``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from phieat.schema import hash_obj, make_key
from render.spec import Spec
from render.views import distinct_indices, render_record, view_job

SCENE_GROUP_BASE = 1000
SCENE_SALT = 104729
# Scene objects stand centred at z = 0 and turn only about Z, so two can only meet where their
# footprints do; the footprint of a box whose largest side is 1 fits in a circle of radius
# 1 / sqrt(2), whatever its turn.
RADIUS_PER_SIZE = 0.71


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
    mesh_list = [meshes[i] for i in distinct_indices(rng, len(meshes), n)]
    placement = _layout(rng, [float(m.get("size_m", 1.0)) for m in mesh_list])
    light_idx = distinct_indices(rng, len(lights), views)
    render = render_record(spec, spec.scene_resolution)
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
        job = view_job(
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
