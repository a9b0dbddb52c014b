"""A tiny real build with ``[scenes].resolution``: object views at 32 px, selection scenes at
64 px, every member and json field of a view at its own view's size."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phieat.schema import object_bbox_pixels, object_crop_meta, validate_sample
from render import storage
from render.build import build
from render.spec import load_spec
from render.verify import iter_tar_samples, verify_dataset

pytestmark = [pytest.mark.blender, pytest.mark.slow]

COLOURS = {"red": [0.8, 0.1, 0.1], "green": [0.1, 0.7, 0.1], "blue": [0.1, 0.1, 0.8]}


def _material(name: str, colour: list[float]) -> dict:
    return {
        "id": f"test-{name}-plastic",
        "category": "plastic",
        "source": "procedural",
        "family": "uniform",
        "params": {"base_color": colour, "roughness": 0.4},
        "licence": "CC0-1.0",
        "group": f"test-{name}-plastic",
        "split": "train",
    }


def _mesh(shape: str) -> dict:
    return {
        "id": f"mesh-{shape.replace('_', '-')}",
        "kind": "primitive",
        "params": {"shape": shape},
        "size_m": 0.3,
        "group": f"mesh-{shape.replace('_', '-')}",
        "split": "train",
        "licence": "CC0-1.0",
    }


def _jsonl(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _spec(folder: Path, light: dict) -> Path:
    _jsonl(folder / "materials.jsonl", [_material(n, c) for n, c in COLOURS.items()])
    _jsonl(folder / "meshes.jsonl", [_mesh("uv_sphere"), _mesh("cube"), _mesh("cylinder")])
    _jsonl(folder / "lights.jsonl", [light])
    path = folder / "spec.toml"
    path.write_text(
        "[dataset]\n"
        'name = "scene-size"\n'
        f"output = {json.dumps(str(folder / 'out'))}\n"
        "views = 2\nshard_size = 4\nmax_materials = 1\n"
        "[render]\n"
        'resolution = 32\nsamples = 2\ndenoise = false\npasses = ["mask", "matid"]\n'
        "[scenes]\n"
        "count = 1\nobjects = [3, 3]\nsame_material_pairs = 0.0\nsame_colour_pairs = 0.0\n"
        "resolution = 64\n"
        "[build]\nmax_retries = 0\n"
    )
    return path


def _open(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_scene_views_are_rendered_and_written_at_the_scene_resolution(tmp_path, job):
    spec = load_spec(_spec(tmp_path, job["light"]))  # the shared jobs' HDRI (city.exr)
    result = build(spec, local=True, progress=False)
    assert result.exit_code == 0
    index = storage.read_json(result.index_url)
    assert index["failures"] == []
    seen = {"object": 0, "scene": 0}
    for shard in index["shards"]:
        for key, members in iter_tar_samples(storage.join(result.version_url, shard["name"])):
            meta = validate_sample({"__key__": key, **members}, image_format="jpg")
            kind = "scene" if "scene_materials" in meta else "object"
            side = 64 if kind == "scene" else 32
            for v, view in enumerate(meta["views"]):
                seen[kind] += 1
                image = _open(members[f"view{v}.jpg"])
                mask = _open(members[f"view{v}.mask.png"])
                matid = _open(members[f"view{v}.matid.png"])
                assert image.shape == (side, side, 3)
                assert mask.shape == matid.shape == (side, side)
                assert view["resolution"] == side
                # The crop metadata is that of this view's own mask, in its own pixels.
                crop = object_crop_meta(mask > 127)
                assert view["object_bbox"] == crop["object_bbox"]
                assert view["object_grid"] == crop["object_grid"]
                x0, y0, x1, y1 = object_bbox_pixels(view["object_bbox"], side, side)
                rows, cols = (
                    np.flatnonzero((mask > 127).any(1)),
                    np.flatnonzero((mask > 127).any(0)),
                )
                assert (x0, y0, x1, y1) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
                if kind == "scene":
                    assert set(np.unique(matid)) == {0, 1, 2, 3}
                    assert view["matid_materials"] == meta["scene_materials"]
                else:
                    assert set(np.unique(matid)) <= {0, 1}
    assert seen == {"object": 2, "scene": 2}
    report = verify_dataset(spec.dataset.output)
    assert report.ok, report.summary()
