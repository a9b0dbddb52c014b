"""Material-selection scenes: several objects in one view, a material-index pass per material."""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phieat.schema import VIEW_FIELDS
from render.errors import MaterialError, RenderError

pytestmark = pytest.mark.blender


def _ids(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int64)


def _cube(job: dict) -> dict:
    return dict(job["mesh"], id="cube", params={"shape": "cube"}, size_m=0.25, group="cube")


def _blue(job: dict) -> dict:
    blue = copy.deepcopy(job["material"])
    blue["id"] = "test-blue-plastic"
    blue["params"]["base_color"] = [0.1, 0.1, 0.8]
    return blue


def _scene_job(job: dict) -> dict:
    """Main red sphere, a blue cube, and a second red object (the same material entry)."""
    job["scene"] = {
        "location": [0.0, 0.0, 0.0],
        "rotation_z": 10.0,
        "scale": 1.0,
        "objects": [
            {
                "material": _blue(job),
                "mesh": _cube(job),
                "location": [0.33, 0.0, 0.0],
                "rotation_z": 20.0,
                "scale": 1.0,
            },
            {
                "material": copy.deepcopy(job["material"]),
                "mesh": _cube(job),
                "location": [-0.33, 0.05, 0.0],
                "rotation_z": 0.0,
                "scale": 0.9,
            },
        ],
    }
    job["camera"]["distance"] = 1.5
    return job


def test_matid_is_per_material_and_listed_in_meta(session, job):
    view = session.render_view(_scene_job(job))
    ids = _ids(view.matid)
    assert set(np.unique(ids)) == {0, 1, 2}
    assert view.meta["matid_materials"] == ["test-red-plastic", "test-blue-plastic"]
    objects = view.meta["scene_objects"]
    assert [o["matid"] for o in objects] == [1, 2, 1]
    assert [o["mesh_id"] for o in objects] == ["sphere", "cube", "cube"]
    for name, kind in VIEW_FIELDS.items():
        assert isinstance(view.meta[name], kind), name
    # Index 1 (red) covers two separate objects: more pixels than the single blue cube would
    # suggest, and red pixels are red, blue pixels blue.
    image = np.asarray(Image.open(io.BytesIO(view.image))).astype(float)
    red, blue = image[ids == 1].mean(0), image[ids == 2].mean(0)
    assert red[0] > red[2] and blue[2] > blue[0]
    left, right = (ids[:, :16] == 1).sum(), (ids[:, 16:] == 1).sum()
    assert left > 0 and right > 0


def test_camera_frames_every_object(session, job):
    job = _scene_job(job)
    job["camera"]["distance"] = 1.01  # far too close: the session backs off until all fit
    view = session.render_view(job)
    ids = _ids(view.matid)
    assert view.meta["camera"]["distance"] > 1.01
    border = np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]])
    assert (border == 0).all()
    assert set(np.unique(ids)) == {0, 1, 2}


def test_overridden_parameters_get_their_own_index(session, job):
    job = _scene_job(job)
    twin = copy.deepcopy(job["material"])
    twin["params"]["roughness"] = 0.9
    twin["colour_match"] = {"source": "test-red-plastic", "base_color": [0.8, 0.1, 0.1]}
    job["scene"]["objects"][1]["material"] = twin
    view = session.render_view(job)
    assert set(np.unique(_ids(view.matid))) == {0, 1, 2, 3}
    assert view.meta["matid_materials"] == [
        "test-red-plastic",
        "test-blue-plastic",
        "test-red-plastic",
    ]
    assert view.meta["scene_objects"][2]["colour_match"]["source"] == "test-red-plastic"


def test_scene_is_deterministic_and_single_views_unchanged(session, job):
    single = copy.deepcopy(job)
    before = session.render_view(single)
    scene = _scene_job(job)
    first = session.render_view(scene)
    again = session.render_view(copy.deepcopy(scene))
    assert first.image == again.image and first.matid == again.matid
    after = session.render_view(single)
    assert hashlib.sha256(before.image).digest() == hashlib.sha256(after.image).digest()
    assert before.matid == after.matid and "matid_materials" not in after.meta


def test_bad_scene_objects_raise_named_errors(session, job):
    job = _scene_job(job)
    bad = copy.deepcopy(job)
    del bad["scene"]["objects"][0]["mesh"]
    with pytest.raises(RenderError, match=r"scene.objects\[0\]"):
        session.render_view(bad)
    broken = copy.deepcopy(job)
    broken["scene"]["objects"][0]["material"]["family"] = "no-such-family"
    with pytest.raises(MaterialError) as info:
        session.render_view(broken)
    assert info.value.material_id == "test-blue-plastic"
    assert set(np.unique(_ids(session.render_view(job).matid))) == {0, 1, 2}


def test_planned_scene_renders_into_a_valid_sample(session, tmp_path):
    """A scene from the planner, rendered by the real session and written by the writer."""
    from phieat.schema import validate_sample
    from render.plan import _select, draw_scenes, load_catalogs, plan_scene
    from render.spec import load_spec
    from render.verify import iter_tar_samples
    from render.writer import render_shard

    spec = load_spec(
        Path(__file__).resolve().parents[3] / "manifests" / "eval-tiny.toml",
        overrides=[
            "render.resolution=32",
            "render.samples=2",
            "dataset.views=2",
            "scenes.count=1",
            "scenes.objects=[3, 3]",
        ],
    )
    mats, meshes, lights = _select(spec, load_catalogs(spec))
    (record,) = draw_scenes(spec, mats)
    sample = plan_scene(spec, record, {m["id"]: m for m in mats}, meshes, lights)
    shard = {
        "name": "shard-000000.tar",
        "samples": [sample],
        "catalog_snapshot": {},
        "plan_hash": "0" * 16,
    }
    sidecar = render_shard(session, shard, str(tmp_path))
    assert sidecar["samples"] == 1 and not sidecar["failures"]
    ((key, members),) = list(iter_tar_samples(str(tmp_path / "shard-000000.tar")))
    meta = validate_sample({"__key__": key, **members}, image_format="jpg")
    expected = [m["id"] for m in sample["scene_materials"]]
    assert meta["scene_materials"] == expected and key == sample["key"]
    for v, view in enumerate(meta["views"]):
        assert view["matid_materials"] == expected
        ids = set(np.unique(_ids(members[f"view{v}.matid.png"]))) - {0}
        assert len(ids) >= 2 and ids <= set(range(1, len(expected) + 1))
