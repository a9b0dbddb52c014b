"""Helpers of the interop tests: materials of several families, a tar read with ``tarfile``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = 5


def family_materials(n: int = FAMILIES) -> list[dict]:
    """The first material of each of ``n`` families of the shipped catalog, split train."""
    out: dict[str, dict] = {}
    for line in (ROOT / "manifests" / "materials.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["family"] not in out and len(out) < n:
            out[entry["family"]] = dict(entry, split="train")
    return list(out.values())


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {member: bytes}}`` of one shard, read with ``tarfile`` alone."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, member = info.name.partition(".")
            out.setdefault(key, {})[member] = tar.extractfile(info).read()
    return out
