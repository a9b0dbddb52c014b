"""Tiny synthetic eval datasets written as real shards (tar + index.json) by the tests.

Each material has a base colour and a stripe texture; a "mesh" sets the object's outline
and a "light" its brightness, so features that see through shape and light can find the
material. Selection views put two or three materials side by side with a matid map.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phieat import schema

CATEGORIES = ("wood", "metal", "stone", "fabric")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def material_texture(index: int, size: int, brightness: float) -> np.ndarray:
    """``(size, size, 3)`` float image of material ``index`` under a light."""
    rng = np.random.default_rng(1000 + index)
    colour = rng.uniform(0.15, 0.85, 3)
    period = 3 + index % 5
    yy, xx = np.mgrid[:size, :size]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * (index % 3 + 1) + yy) / period)
    tex = colour[None, None, :] * (0.7 + 0.3 * stripes[..., None])
    return np.clip(tex * brightness, 0, 1)


def mesh_mask(mesh: int, size: int) -> np.ndarray:
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    radius = 0.55 + 0.08 * (mesh % 4)
    power = 2 + 2 * (mesh % 3)  # circle, rounded square, squarer
    return (np.abs(xx) ** power + np.abs(yy) ** power) ** (1 / power) < radius


def make_material(i: int, prefix: str = "mat", n_families: int = 6) -> dict:
    return {
        "id": f"{prefix}-{i:03d}",
        "category": CATEGORIES[i % len(CATEGORIES)],
        "source": "procedural",
        "family": f"fam-{i % n_families}",
        "group": f"{prefix}-grp-{i:03d}",
        # Roughness cycles through glossy / medium / rough; every third family is metal.
        "params": {
            "index": i,
            "roughness": (0.1, 0.45, 0.8)[i % 3],
            "metallic": 1.0 if (i % n_families) % 3 == 0 else 0.0,
        },
    }


def write_dataset(
    out: Path,
    materials: list[dict],
    meshes: list[str],
    lights: list[str],
    views: int = 4,
    size: int = 32,
    seed: int = 0,
    selection: bool | set[str] = False,
    index_extra: dict | None = None,
    per_shard: int = 8,
    scene_size: int | None = None,
) -> Path:
    """Write ``out/shard-*.tar`` + ``index.json``; one sample per material.

    ``selection``: True, or the material ids whose samples become two-material selection
    scenes as the renderer writes them: ``scene_materials`` in the json, ``scene_objects``
    and ``matid_materials`` in each view, and a matid map with the background (0) on the top
    quarter, the sample's material (1) on the left and another (2) on the right.
    ``scene_size``: the pixels per side of those scene views (default: ``size``), as a spec's
    ``[scenes].resolution`` renders them.
    """
    rng = np.random.default_rng(seed)
    base_size = size
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, start in enumerate(range(0, len(materials), per_shard)):
        name = schema.shard_name(s)
        with tarfile.open(out / name, "w") as tar:
            for mat in materials[start : start + per_shard]:
                idx = int(mat["params"]["index"])
                key = schema.make_key(mat["id"], 0)
                members: list[tuple[str, bytes]] = []
                view_meta = []
                is_scene = selection is True or (selection and mat["id"] in selection)
                for v in range(views):
                    size = scene_size if is_scene and scene_size else base_size
                    mesh = int(rng.integers(len(meshes)))
                    light = int(rng.integers(len(lights)))
                    bright = 0.6 + 0.15 * light
                    img = np.full((size, size, 3), 0.5)
                    mask = mesh_mask(mesh, size)
                    img[mask] = material_texture(idx, size, bright)[mask]
                    img = (img * 255).round().astype(np.uint8)
                    members.append((f"view{v}.jpg", _jpg(img)))
                    members.append((f"view{v}.mask.png", _png(mask.astype(np.uint8) * 255)))
                    if is_scene:
                        other = (idx + 1 + v) % 7 + 100
                        matid = np.full((size, size), 1, np.uint16)
                        matid[:, size // 2 :] = 2
                        matid[: size // 4] = 0
                        img2 = material_texture(idx, size, bright)
                        img2[:, size // 2 :] = material_texture(other, size, bright)[:, size // 2 :]
                        img2[: size // 4] = 0.5
                        members[-2] = (f"view{v}.jpg", _jpg((img2 * 255).round().astype(np.uint8)))
                        members[-1] = (
                            f"view{v}.mask.png",
                            _png(((matid > 0) * 255).astype(np.uint8)),
                        )
                        members.append((f"view{v}.matid.png", _png(matid)))
                    view_meta.append(
                        {
                            "mesh_id": meshes[mesh],
                            "light_id": lights[light],
                            "light_rotation": 0.0,
                            "light_strength": 1.0,
                            "camera": {"distance": 2.6, "elevation": 20.0, "azimuth": 0.0},
                            "seed": int(rng.integers(1 << 30)),
                            "samples": 4,
                            "view_transform": "Standard",
                            "render_time_s": 0.1,
                        }
                    )
                    if is_scene:
                        ids = [mat["id"], f"other-{idx:03d}"]
                        view_meta[-1]["matid_materials"] = ids
                        view_meta[-1]["scene_objects"] = [
                            {"material_id": m, "matid": k + 1, "mesh_id": meshes[mesh]}
                            for k, m in enumerate(ids)
                        ]
                meta = {
                    "schema_version": schema.SCHEMA_VERSION,
                    "key": key,
                    "material": mat,
                    "views": view_meta,
                    "blender_version": "5.0.1",
                    "catalog_snapshot": {},
                    "plan_hash": "0" * 16,
                }
                if selection is True or (selection and mat["id"] in selection):
                    meta["scene_materials"] = [mat["id"], f"other-{idx:03d}"]
                members.append(("json", json.dumps(meta).encode()))
                for member, data in members:
                    info = tarfile.TarInfo(f"{key}.{member}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(
            {
                "name": name,
                "samples": len(materials[start : start + per_shard]),
                "bytes": (out / name).stat().st_size,
                "sha256": "0" * 64,
                "plan_hash": "0" * 16,
            }
        )
    index = {
        "schema_version": schema.SCHEMA_VERSION,
        "dataset": out.name,
        "version": "1",
        "complete": True,
        "views_per_sample": views,
        "image_format": "jpg",
        "spec_hash": "0" * 16,
        "catalog_hashes": {},
        "shards": shards,
        "failures": [],
        "materials": [m["id"] for m in materials],
        "categories": sorted({m["category"] for m in materials}),
        "licences": {},
        **(index_extra or {}),
    }
    (out / schema.INDEX_NAME).write_text(json.dumps(index))
    return out


@pytest.fixture
def dataset_writer():
    return write_dataset


@pytest.fixture
def material_factory():
    return make_material
