"""The files that close a build: ``index.json`` (with a kept copy under ``indexes/``) and
``failures.jsonl``.

``write_index`` gathers what the published shards hold (materials, meshes, lights, their
licences) from the plan and the shards' sidecars, writes the dataset card and ``wids.json``
(``render.card``) and then ``index.json``, which marks the version finished.
``render.build`` calls both once its pool has run.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

from phieat.schema import (
    FAILURES_NAME,
    INDEX_LIGHTS,
    INDEX_MATERIAL_GROUPS,
    INDEX_MESHES,
    INDEX_NAME,
    SCHEMA_VERSION,
    canonical_json,
    validate_index,
)
from render import card, storage
from render.plan import Plan
from render.spec import Spec

INDEX_DIR = "indexes"


def write_index(
    spec: Spec,
    plan: Plan,
    version: str,
    version_url: str,
    sidecars: dict[str, dict],
    failures: list[dict],
    catalog_hashes: dict[str, str],
    blender_version: str,
) -> tuple[dict, str]:
    """Write ``index.json`` (and a kept copy under ``indexes/``); returns it and its URL.

    Before it, ``README.md`` and ``wids.json`` (``render.card``), made from the json members
    of every indexed shard: a build re-reads them each time it ends.
    """
    shards = []
    materials: dict[str, dict] = {}
    used: dict[str, dict[str, dict]] = {"meshes": {}, "lights": {}}
    for shard in plan.shards:
        sidecar = sidecars.get(shard.name)
        if sidecar is None:
            continue
        shards.append(
            {
                "name": shard.name,
                "samples": sidecar["samples"],
                "bytes": sidecar["bytes"],
                "sha256": sidecar["sha256"],
                "plan_hash": sidecar["plan_hash"],
                "generation": shard.generation,
            }
        )
        present = set(sidecar["keys"])
        for sample in shard.samples:
            if sample["key"] in present:
                materials[sample["material"]["id"]] = sample["material"]
                for entry in sample.get("scene_materials", []):
                    materials.setdefault(entry["id"], entry)
                for job in sample["views"]:
                    used["lights"].setdefault(job["light"]["id"], job["light"])
                    objects = job.get("scene", {}).get("objects", [])
                    for mesh in [job["mesh"], *(o["mesh"] for o in objects)]:
                        used["meshes"].setdefault(mesh["id"], mesh)
    licences: dict[str, list[str]] = {}
    for mid, entry in sorted(materials.items()):
        licences.setdefault(entry["licence"], []).append(mid)
    asset_licences: dict[str, dict[str, list[str]]] = {"meshes": {}, "lights": {}}
    for snap in plan.generations:
        for kind in ("meshes", "lights"):
            for entry in snap[kind]:
                ids = asset_licences[kind].setdefault(entry["licence"], [])
                if entry["id"] not in ids:
                    ids.append(entry["id"])
    index = {
        "schema_version": SCHEMA_VERSION,
        "dataset": spec.dataset.name,
        "version": version,
        "complete": len(shards) == len(plan.shards),
        "views_per_sample": spec.dataset.views,
        "image_format": spec.render.image_format,
        "spec_hash": spec.spec_hash(),
        "catalog_hashes": catalog_hashes,
        "shards": shards,
        "failures": failures,
        "materials": sorted(materials),
        INDEX_MATERIAL_GROUPS: sorted({str(m.get("group") or m["id"]) for m in materials.values()}),
        INDEX_MESHES: sorted(used["meshes"]),
        INDEX_LIGHTS: sorted(used["lights"]),
        "categories": sorted({m["category"] for m in materials.values()}),
        "licences": licences,
        "asset_licences": {
            k: {lic: sorted(v) for lic, v in d.items()} for k, d in asset_licences.items()
        },
        "samples": sum(s["samples"] for s in shards),
        "generations": len(plan.generations),
        "blender_version": blender_version,
        "view_transform": spec.render.view_transform,
        "spec": spec.render_settings(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if spec.hard_negatives.group_size:
        index["hard_negative_group_size"] = spec.hard_negatives.group_size
    validate_index(index)
    # The card and wids list first: index.json, written last, marks the version finished.
    summaries = card.scan_shards(version_url, [s["name"] for s in shards])
    used_licences = {
        kind: Counter(str(e.get("licence", "unknown")) for e in entries.values())
        for kind, entries in used.items()
    }
    card.write_card(version_url, index, summaries, used_licences)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    storage.write_json(storage.join(version_url, INDEX_DIR, f"index-{stamp}.json"), index)
    index_url = storage.join(version_url, INDEX_NAME)
    storage.write_json(index_url, index)
    return index, index_url


def write_failures(version_url: str, failures: list[dict]) -> None:
    """Write ``failures.jsonl``: one failure record per line, in the order given."""
    text = "".join(canonical_json(f) + "\n" for f in failures)
    storage.write_bytes(storage.join(version_url, FAILURES_NAME), text.encode("utf-8"))
