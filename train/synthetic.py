"""Tiny synthetic shards in the exact shard format, for tests, benchmarks and smoke runs.

Each material is a seeded texture (base colour, stripe frequency and angle, grain); each view
paints it on a different "mesh" (ellipse / rounded box silhouette) under a different "light"
(brightness gradient) over a plain background, with the object mask. Members and metadata
follow ``phieat.schema`` exactly, so the real loader reads them like rendered shards::

    from train.synthetic import write_synthetic_shards
    urls = write_synthetic_shards("/tmp/ds", materials=8, views=4, size=64)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from phieat import schema

CATEGORIES = ("metal", "wood", "fabric", "stone", "plastic", "ceramic")


def _texture(rng: np.random.Generator, size: int, material: dict) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle, freq = material["angle"], material["freq"]
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin(
        2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase
    )
    grain = rng.normal(0, material["grain"], size=(size, size)).astype(np.float32)
    base = np.asarray(material["color"], dtype=np.float32)
    accent = np.asarray(material["accent"], dtype=np.float32)
    tex = base[None, None] * (1 - stripes[..., None]) + accent[None, None] * stripes[..., None]
    return np.clip(tex + grain[..., None], 0, 1)


def _silhouette(mesh: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    radii = [(0.38, 0.38), (0.42, 0.28), (0.3, 0.42), (0.4, 0.34)][mesh % 4]
    if mesh % 2 == 0:
        return (xx / radii[0]) ** 2 + (yy / radii[1]) ** 2 <= 1.0
    return (np.abs(xx) ** 4 / radii[0] ** 4 + np.abs(yy) ** 4 / radii[1] ** 4) <= 1.0


def render_view(
    material: dict, mesh: int, light: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image ``[size, size, 3]`` and bool mask ``[size, size]`` of one synthetic view."""
    rng = np.random.default_rng(seed)
    tex = _texture(rng, size, material)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    direction = 2 * np.pi * light / 5.0
    shade = 0.65 + 0.35 * (np.cos(direction) * (xx - 0.5) + np.sin(direction) * (yy - 0.5)) * 2
    shade *= 0.85 + 0.1 * (light % 3)
    mask = _silhouette(mesh, size)
    background = np.full((size, size, 3), 0.25 + 0.15 * (light % 4), dtype=np.float32)
    image = np.where(mask[..., None], np.clip(tex * shade[..., None], 0, 1), background)
    return (image * 255).round().astype(np.uint8), mask


def make_materials(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        out.append(
            {
                "id": f"synth-{i:03d}",
                "category": CATEGORIES[i % len(CATEGORIES)],
                "color": rng.uniform(0.05, 0.95, size=3).round(3).tolist(),
                "accent": rng.uniform(0.05, 0.95, size=3).round(3).tolist(),
                "freq": float(rng.choice([2.0, 4.0, 7.0, 11.0])),
                "angle": float(rng.uniform(0, np.pi)),
                "grain": float(rng.choice([0.0, 0.04, 0.1])),
            }
        )
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=92)
    else:
        Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_shards(
    out_dir: str | os.PathLike,
    materials: int = 8,
    views: int = 4,
    size: int = 64,
    per_shard: int = 4,
    groups: int = 1,
    seed: int = 0,
    image_format: str = "jpg",
    index: bool = True,
    hard_negative_group_size: int = 0,
    crop_meta: bool = True,
) -> list[str]:
    """Write ``materials x groups`` samples of ``views`` views into shards; returns their paths.

    ``hard_negative_group_size`` k > 0 tags every k consecutive samples with one
    ``hard_negative_group`` id, as a ``[hard_negatives]`` build writes them. ``crop_meta``:
    each view's json holds the crop metadata the renderer writes (``object_bbox``,
    ``object_grid``); without it a loader reads the mask, as for datasets older than it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mats = make_materials(materials, seed)
    samples = []
    for group in range(groups):
        for m, material in enumerate(mats):
            samples.append((m, material, group))
    shards, records = [], []
    for s in range(0, len(samples), per_shard):
        name = schema.shard_name(len(shards))
        tmp = out / (name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for m, material, group in samples[s : s + per_shard]:
                key = schema.make_key(material["id"], group)
                view_meta = []
                for v in range(views):
                    mesh, light = (v + group) % 4, (v * 3 + m + group) % 5
                    view_seed = seed * 1_000_003 + m * 1009 + group * 101 + v
                    image, mask = render_view(material, mesh, light, size, view_seed)
                    _add(
                        tar,
                        f"{key}.{schema.view_member(v, image_format)}",
                        _encode(image, image_format),
                    )
                    _add(
                        tar,
                        f"{key}.{schema.mask_member(v)}",
                        _encode(mask.astype(np.uint8) * 255, "png"),
                    )
                    view_meta.append(
                        {
                            "mesh_id": f"mesh-{mesh}",
                            "light_id": f"light-{light}",
                            "light_rotation": 0.0,
                            "light_strength": 1.0,
                            "camera": {
                                "distance": 2.6,
                                "elevation": 20.0,
                                "azimuth": 45.0 * v,
                                "lens_mm": 50.0,
                            },
                            "seed": view_seed,
                            "samples": 1,
                            "view_transform": "Standard",
                            "render_time_s": 0.0,
                        }
                    )
                    if crop_meta:  # what the crop sampler needs, as the renderer writes it
                        view_meta[-1].update(schema.object_crop_meta(mask))
                meta = {
                    "schema_version": schema.SCHEMA_VERSION,
                    "key": key,
                    "material": {
                        "id": material["id"],
                        "category": material["category"],
                        "source": "procedural",
                        "params": {
                            k: material[k] for k in ("color", "accent", "freq", "angle", "grain")
                        },
                    },
                    "views": view_meta,
                    "blender_version": "synthetic",
                    "catalog_snapshot": {},
                    "plan_hash": "synthetic",
                }
                if hard_negative_group_size > 0:
                    number = samples.index((m, material, group)) // hard_negative_group_size
                    meta[schema.HARD_NEGATIVE_GROUP] = f"hn-0000-{number:06d}"
                _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
        os.replace(tmp, out / name)
        data = (out / name).read_bytes()
        records.append(
            {
                "name": name,
                "samples": len(samples[s : s + per_shard]),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "plan_hash": "synthetic",
            }
        )
        shards.append(str(out / name))
    if index:
        payload = {
            "schema_version": schema.SCHEMA_VERSION,
            "dataset": "synthetic",
            "version": "v1",
            "complete": True,
            "views_per_sample": views,
            "image_format": image_format,
            "spec_hash": schema.hash_obj({"materials": materials, "views": views, "seed": seed}),
            "catalog_hashes": {},
            "shards": records,
            "failures": [],
            "materials": [m["id"] for m in mats],
            "categories": sorted({m["category"] for m in mats}),
            "licences": {"synthetic": "CC0-1.0"},
        }
        tmp = out / (schema.INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        os.replace(tmp, out / schema.INDEX_NAME)
    return shards
