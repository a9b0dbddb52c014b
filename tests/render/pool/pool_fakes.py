"""A fake renderer and tiny catalogs for fast tests of planning, writing and orchestration.

``FakeSession`` has the ``BlenderSession`` interface and returns tiny encoded images whose
colour depends on the material and view, so tests can check what ended up where without
Blender. Material params steer failures: ``{"fail": 1}`` raises ``MaterialError`` on every
attempt, ``{"fail_once": 1}`` only on the first, ``{"crash": 1}`` raises a non-material error,
``{"sleep_s": 30}`` makes every view of the material take that long (a stuck render).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from render.errors import MaterialError


@dataclass
class FakeView:
    image: bytes
    mask: bytes | None
    matid: bytes | None
    meta: dict = field(default_factory=dict)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class FakeSession:
    """Renders a flat colour per (material, view); counts calls and resets."""

    blender_version = "5.0.1"
    instances = 0

    def __init__(self, threads: int = 1, device: str = "CPU", quiet: bool = True) -> None:
        self.threads = threads
        self.device = device
        self.calls: list[tuple[str, int]] = []
        self.resets = 0
        self.failed_once: set[str] = set()
        FakeSession.instances += 1

    def render_view(self, job: dict) -> FakeView:
        mid = job["material"]["id"]
        params = job["material"].get("params", {})
        self.calls.append((job["key"], job["view"]))
        if params.get("fail"):
            raise MaterialError(mid, "texture file is corrupt")
        if params.get("fail_once") and mid not in self.failed_once:
            self.failed_once.add(mid)
            raise MaterialError(mid, "transient failure")
        if params.get("crash"):
            raise RuntimeError("simulated Blender crash")
        if params.get("sleep_s"):
            time.sleep(float(params["sleep_s"]))
        res = job["render"]["resolution"]
        shade = hashlib.sha256(f"{mid}/{job['view']}".encode()).digest()[:3]
        rgb = np.empty((res, res, 3), np.uint8)
        rgb[:] = np.frombuffer(shade, np.uint8)
        buf = io.BytesIO()
        fmt = job["render"]["image_format"]
        if fmt == "jpg":
            Image.fromarray(rgb).save(buf, format="JPEG", quality=job["render"]["jpeg_quality"])
        else:
            Image.fromarray(rgb).save(buf, format="PNG")
        passes = job["render"]["passes"]
        mask = _png(np.full((res, res), 255, np.uint8)) if "mask" in passes else None
        matid = _png(np.ones((res, res), np.uint16)) if "matid" in passes else None
        meta = {
            "mesh_id": job["mesh"]["id"],
            "light_id": job["light"]["id"],
            "light_rotation": job["light_rotation"],
            "light_strength": job["light_strength"],
            "camera": job["camera"],
            "seed": job["seed"],
            "samples": job["render"]["samples"],
            "view_transform": job["render"]["view_transform"],
            "render_time_s": 0.001,
            "engine_time_s": 0.0005,
            "threads": self.threads,
        }
        return FakeView(buf.getvalue(), mask, matid, meta)

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def reset(self) -> None:
        self.resets += 1

    def rss_mb(self) -> float:
        return 100.0


def fake_factory(threads: int = 1, device: str = "CPU", quiet: bool = True) -> FakeSession:
    return FakeSession(threads=threads, device=device, quiet=quiet)


def material(mid: str, family: str = "uniform", split: str = "train", **params) -> dict:
    """A procedural material entry; ``uniform`` is the family every Blender session knows."""
    return {
        "id": mid,
        "category": "plastic",
        "source": "procedural",
        "family": family,
        "params": {"base_color": [0.6, 0.2, 0.1], "roughness": 0.4, **params},
        "licence": "CC0-1.0",
        "group": mid,
        "split": split,
    }


def mesh(mid: str, shape: str = "uv_sphere") -> dict:
    return {
        "id": mid,
        "kind": "primitive",
        "params": {"shape": shape},
        "size_m": 0.3,
        "group": mid,
        "split": "train",
        "licence": "CC0-1.0",
    }


def light(name: str) -> dict:
    return {
        "id": f"hdri-{name}",
        "kind": "hdri",
        "params": {},
        "path": f"bpy:studiolights/world/{name}.exr",
        "group": f"hdri-{name}",
        "split": "train",
        "licence": "CC0-1.0",
    }


def write_jsonl(path: Path, entries: list[dict]) -> None:
    path.write_text(
        "".join(
            json.dumps(e, sort_keys=True) + "\n" for e in sorted(entries, key=lambda e: e["id"])
        )
    )


def write_catalogs(
    folder: Path,
    n_materials: int = 6,
    meshes: tuple[str, ...] = ("uv_sphere", "cube", "torus"),
    lights: tuple[str, ...] = ("city", "forest", "studio"),
    extra_materials: list[dict] | None = None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mats = [material(f"mat-{i:03d}") for i in range(n_materials)]
    write_jsonl(folder / "materials.jsonl", mats + list(extra_materials or []))
    write_jsonl(folder / "meshes.jsonl", [mesh(f"mesh-{s.replace('_', '-')}", s) for s in meshes])
    write_jsonl(folder / "lights.jsonl", [light(n) for n in lights])


def write_spec(folder: Path, output: str, **sections: dict) -> Path:
    """A spec in ``folder`` (beside its catalogs); ``sections`` override tables."""
    tables = {
        "dataset": {"name": "unit", "output": output, "seed": 7, "views": 2, "shard_size": 2},
        "render": {"resolution": 32, "samples": 2, "denoise": False},
        "build": {"max_failure_fraction": 0.5},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = folder / "spec.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cuda_only_factory(threads: int = 1, device: str = "CPU", quiet: bool = True) -> FakeSession:
    """A worker whose GPU has CUDA but no OptiX (the pool must fall back to CUDA)."""
    if device == "OPTIX":
        raise RuntimeError("device 'OPTIX' requested but no such GPU is visible")
    return FakeSession(threads=threads, device=device, quiet=quiet)
