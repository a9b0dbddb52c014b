"""The built-in mesh catalog and scanning of user mesh folders (plain Python).

Built-in meshes are parametric, so an entry's ``params`` fully determine the geometry that
``render.blender.meshes.build_mesh`` makes:

* ``primitive``: sphere, ico-sphere, cube, cylinder, cone, torus, monkey, each plain and
  with deformers (twist, bend, taper, bevel, noise displacement);
* ``superquadric``: Barr's superellipsoids (``e1``, ``e2`` exponents, axis ratios);
* ``blob``: a sphere pushed by a few seeded smooth lobes;
* ``lathe``: vases, bottles, bowls and cups revolved from radius profiles;
* ``furniture``: tables, stools, benches, chairs and shelves built from boxes/cylinders.

``size_m`` is the largest side of the bounding box in metres (see ``assets.units``).
Meshes made from one base shape share a ``group`` so the split keeps them together.
User folders of OBJ/PLY/STL/GLB files become ``kind: "file"`` entries; each file's size
comes from a sidecar ``<name>.json`` (``{"size_m": 0.4}``) or the default given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from phieat.schema import slugify

LICENCE = "CC0-1.0"
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".glb", ".gltf")
MESH_KINDS = ("primitive", "superquadric", "blob", "lathe", "furniture", "file")


def _entry(mesh_id: str, kind: str, params: dict, size_m: float, group: str) -> dict:
    return {
        "id": mesh_id,
        "kind": kind,
        "params": params,
        "size_m": round(float(size_m), 4),
        "group": group,
        "split": "train",
        "licence": LICENCE,
    }


def _primitives() -> list[dict]:
    shapes = {
        "sphere": ({"shape": "uv_sphere", "detail": 3}, 0.25),
        "icosphere": ({"shape": "ico_sphere", "detail": 3}, 0.2),
        "cube": ({"shape": "cube", "bevel": 0.06}, 0.2),
        "cylinder": ({"shape": "cylinder", "detail": 3, "bevel": 0.04}, 0.3),
        "cone": ({"shape": "cone", "detail": 3}, 0.25),
        "torus": ({"shape": "torus", "minor": 0.35, "detail": 2}, 0.3),
        "monkey": ({"shape": "monkey", "subdivide": 1}, 0.25),
    }
    deformers = {
        "": {},
        "twist": {"twist": 0.9, "subdivide": 3},
        "bend": {"bend": 0.5, "subdivide": 3},
        "taper": {"taper": -0.35, "subdivide": 2},
        "bumpy": {"displace": 0.06, "displace_freq": 3.0, "subdivide": 3, "seed": 7},
    }
    out = []
    for name, (params, size) in shapes.items():
        for dname, deform in deformers.items():
            if name in ("sphere", "icosphere") and dname in ("twist", "taper"):
                continue  # a round shape barely changes under these
            if name == "monkey" and dname != "":
                continue
            p = dict(params)
            p.update(deform)
            if "subdivide" in deform and name in ("sphere", "icosphere", "torus"):
                p["subdivide"] = 0  # already dense
            mesh_id = f"prim-{name}" + (f"-{dname}" if dname else "")
            out.append(_entry(mesh_id, "primitive", p, size, f"prim-{name}"))
    # A second torus and a flat slab widen the range of curvature.
    out.append(
        _entry(
            "prim-torus-thin",
            "primitive",
            {"shape": "torus", "minor": 0.15, "detail": 2},
            0.35,
            "prim-torus-thin",
        )
    )
    out.append(
        _entry(
            "prim-slab",
            "primitive",
            {"shape": "cube", "bevel": 0.02, "scale": [1.0, 1.0, 0.25]},
            0.4,
            "prim-slab",
        )
    )
    return out


def _superquadrics() -> list[dict]:
    shapes = [
        ("pillow", 0.3, 0.3, (1.0, 1.0, 0.6)),
        ("rounded-box", 0.2, 0.2, (1.0, 0.8, 0.7)),
        ("cushion", 0.6, 0.25, (1.0, 1.0, 0.45)),
        ("diamond", 1.6, 1.6, (1.0, 1.0, 1.0)),
        ("star", 2.5, 2.5, (1.0, 1.0, 1.0)),
        ("cylinderish", 0.15, 1.0, (1.0, 1.0, 1.3)),
        ("spindle", 1.5, 1.0, (1.0, 1.0, 1.6)),
        ("pebble", 0.8, 0.9, (1.0, 0.75, 0.5)),
        ("capsule", 0.5, 1.0, (0.7, 0.7, 1.4)),
        ("lozenge", 1.0, 0.35, (1.0, 0.6, 0.5)),
    ]
    return [
        _entry(
            f"sq-{name}",
            "superquadric",
            {"e1": e1, "e2": e2, "axes": list(axes)},
            0.25,
            f"sq-{name}",
        )
        for name, e1, e2, axes in shapes
    ]


def _blobs(count: int = 8) -> list[dict]:
    out = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        params = {
            "seed": 1000 + i,
            "lobes": int(rng.integers(3, 9)),
            "amplitude": round(float(rng.uniform(0.15, 0.45)), 3),
        }
        out.append(
            _entry(
                f"blob-{i:02d}",
                "blob",
                params,
                round(float(rng.uniform(0.15, 0.35)), 3),
                f"blob-{i:02d}",
            )
        )
    return out


def _lathes() -> list[dict]:
    profiles = {
        "vase-amphora": ([0.35, 0.6, 0.85, 0.9, 0.7, 0.4, 0.25, 0.3, 0.38], 2.4, 0.45),
        "vase-bulb": ([0.3, 0.8, 1.0, 0.8, 0.35, 0.2, 0.22, 0.3], 2.0, 0.3),
        "vase-tall": ([0.4, 0.45, 0.5, 0.5, 0.45, 0.35, 0.3, 0.35, 0.45, 0.5], 3.5, 0.5),
        "bottle": ([0.5, 0.55, 0.55, 0.55, 0.5, 0.25, 0.15, 0.15, 0.17], 3.0, 0.3),
        "bowl": ([0.35, 0.7, 0.9, 1.0, 1.05], 0.9, 0.2),
        "cup": ([0.55, 0.62, 0.68, 0.72, 0.75], 1.6, 0.1),
        "goblet": ([0.6, 0.2, 0.1, 0.1, 0.35, 0.7, 0.8], 2.2, 0.2),
        "urn": ([0.5, 0.4, 0.7, 0.95, 0.9, 0.6, 0.5, 0.6], 2.2, 0.4),
        "column": ([1.2, 1.0, 0.8, 0.78, 0.76, 0.75, 0.8, 1.0, 1.2], 5.0, 0.9),
        "egg": ([0.05, 0.65, 0.9, 0.95, 0.85, 0.6, 0.05], 2.6, 0.15),
    }
    return [
        _entry(f"lathe-{name}", "lathe", {"profile": prof, "height": h}, size, f"lathe-{name}")
        for name, (prof, h, size) in profiles.items()
    ]


def _furniture() -> list[dict]:
    items = [
        (
            "table-dining",
            {"type": "table", "dims": [1.2, 0.8, 0.75], "thickness": 0.04, "leg": 0.06},
        ),
        (
            "table-coffee",
            {
                "type": "table",
                "dims": [0.9, 0.5, 0.42],
                "thickness": 0.05,
                "leg": 0.05,
                "round_legs": True,
            },
        ),
        (
            "table-side",
            {
                "type": "table",
                "dims": [0.45, 0.45, 0.55],
                "thickness": 0.03,
                "leg": 0.035,
                "round_legs": True,
            },
        ),
        (
            "stool-bar",
            {
                "type": "stool",
                "dims": [0.38, 0.38, 0.75],
                "thickness": 0.04,
                "leg": 0.035,
                "round_legs": True,
            },
        ),
        ("stool-low", {"type": "stool", "dims": [0.4, 0.3, 0.45], "thickness": 0.05, "leg": 0.045}),
        ("bench", {"type": "bench", "dims": [1.4, 0.35, 0.45], "thickness": 0.05, "leg": 0.06}),
        (
            "chair-plain",
            {
                "type": "chair",
                "dims": [0.45, 0.45, 0.9],
                "seat": 0.45,
                "thickness": 0.035,
                "leg": 0.04,
            },
        ),
        (
            "chair-round-leg",
            {
                "type": "chair",
                "dims": [0.5, 0.48, 0.85],
                "seat": 0.46,
                "thickness": 0.04,
                "leg": 0.035,
                "round_legs": True,
            },
        ),
        ("shelf-low", {"type": "shelf", "dims": [0.8, 0.3, 0.8], "thickness": 0.025, "shelves": 2}),
        (
            "shelf-tall",
            {"type": "shelf", "dims": [0.6, 0.3, 1.6], "thickness": 0.025, "shelves": 5},
        ),
    ]
    out = []
    for name, params in items:
        size = max(params["dims"])
        out.append(_entry(f"furn-{name}", "furniture", params, size, f"furn-{name.split('-')[0]}"))
    return out


def builtin_meshes() -> list[dict]:
    """Every built-in mesh entry, sorted by id."""
    entries = _primitives() + _superquadrics() + _blobs() + _lathes() + _furniture()
    return sorted(entries, key=lambda e: e["id"])


def scan_mesh_folder(
    folder: str | Path, default_size_m: float = 0.3, prefix: str = "file", licence: str = "unknown"
) -> list[dict]:
    """Entries for every OBJ/PLY/STL/GLB file under ``folder`` (recursively).

    Each file's real size comes from a sidecar ``<stem>.json`` holding ``size_m`` (and
    optionally ``licence``), else ``default_size_m``. IDs are ``<prefix>-<slug of path>``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"mesh folder {folder} does not exist or is not a folder")
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES):
        rel = path.relative_to(folder)
        size, lic = float(default_size_m), licence
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{sidecar}: not valid JSON ({exc})") from exc
            size = float(meta.get("size_m", size))
            lic = str(meta.get("licence", meta.get("license", lic)))
        if not size > 0:
            raise ValueError(f"{sidecar}: size_m must be > 0, got {size}")
        mesh_id = slugify(f"{prefix}-{rel.with_suffix('').as_posix()}")
        entry = _entry(mesh_id, "file", {"format": path.suffix.lower().lstrip(".")}, size, mesh_id)
        entry["path"] = str(path.resolve())
        entry["licence"] = lic
        out.append(entry)
    return out
