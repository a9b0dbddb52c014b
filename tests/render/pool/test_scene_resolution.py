"""``[scenes].resolution``: selection scenes rendered at their own size, object views at the
render resolution; specs without the key plan (and hash) exactly as before."""

from __future__ import annotations

import io

import numpy as np
import pool_fakes
import pytest
from PIL import Image

from phieat.schema import object_bbox_pixels, object_crop_meta, validate_sample
from render import storage
from render.build import build
from render.estimate import estimate, format_estimate, model_core_s_per_image
from render.plan import dataset_version, load_catalogs, make_plan
from render.spec import SpecError
from render.verify import _size_problems, iter_tar_samples, verify_dataset

RENDER = {"passes": ["mask", "matid"]}
SCENES = {"count": 3, "objects": [2, 3]}


def _jobs(plan) -> tuple[list[dict], list[dict]]:
    """(object view jobs, scene view jobs) of a plan."""
    objects, scenes = [], []
    for shard in plan.shards:
        for sample in shard.samples:
            (scenes if "scene_materials" in sample else objects).extend(sample["views"])
    return objects, scenes


def test_scene_jobs_render_at_the_scene_resolution(make_spec):
    spec = make_spec(render=RENDER, scenes={**SCENES, "resolution": 96})
    assert spec.scene_resolution == 96
    objects, scenes = _jobs(make_plan(spec, load_catalogs(spec)))
    assert len(objects) == 6 * 2 and len(scenes) == 3 * 2
    assert {j["render"]["resolution"] for j in objects} == {32}
    assert {j["render"]["resolution"] for j in scenes} == {96}
    # Nothing else of a scene job changes with its size.
    plain = make_spec(render=RENDER, scenes=SCENES)
    _, same = _jobs(make_plan(plain, load_catalogs(plain)))
    for job, other in zip(scenes, same, strict=True):
        assert {**job, "render": None} == {**other, "render": None}
        assert {**job["render"], "resolution": 32} == other["render"]


def test_specs_without_a_scene_resolution_keep_their_plan_and_version(make_spec):
    plain = make_spec(render=RENDER, scenes=SCENES)
    catalogs = load_catalogs(plain)
    assert "resolution" not in plain.render_settings()["scenes"]
    assert "resolution" not in plain.to_dict()["scenes"]
    for same in (
        make_spec(render=RENDER, scenes={**SCENES, "resolution": 0}),
        make_spec(render=RENDER, scenes={**SCENES, "resolution": 32}),  # = [render].resolution
    ):
        assert make_plan(same, catalogs).to_json() == make_plan(plain, catalogs).to_json()
        assert dataset_version(same, "5.0.1") == dataset_version(plain, "5.0.1")
    bigger = make_spec(render=RENDER, scenes={**SCENES, "resolution": 64})
    assert bigger.render_settings()["scenes"]["resolution"] == 64
    assert dataset_version(bigger, "5.0.1") != dataset_version(plain, "5.0.1")
    # Without scenes the key changes nothing at all.
    none = make_spec(render=RENDER)
    unused = make_spec(render=RENDER, scenes={"count": 0, "resolution": 64})
    assert make_plan(none, catalogs).to_json() == make_plan(unused, catalogs).to_json()
    assert dataset_version(none, "5.0.1") == dataset_version(unused, "5.0.1")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-64, r"\[scenes\]\.resolution must be 0 .* or within 16\.\.8192 pixels, got -64"),
        (8, r"\[scenes\]\.resolution must be 0 .* or within 16\.\.8192 pixels, got 8"),
        (100000, r"\[scenes\]\.resolution must be 0 .* or within 16\.\.8192 pixels"),
        ("256", r"\[scenes\]\.resolution must be an integer"),
        (256.0, r"\[scenes\]\.resolution must be an integer"),
    ],
)
def test_scene_resolution_is_checked(make_spec, value, message):
    with pytest.raises(SpecError, match=message):
        make_spec(render=RENDER, scenes={**SCENES, "resolution": value})


def test_estimate_counts_the_scene_pixels(make_spec):
    plain = make_spec(render=RENDER, scenes=SCENES)
    big = make_spec(render=RENDER, scenes={**SCENES, "resolution": 128})
    est_plain = estimate(make_plan(plain, load_catalogs(plain)), cores=2)
    est_big = estimate(make_plan(big, load_catalogs(big)), cores=2)
    assert est_plain["images"] == est_big["images"] == 18
    small, large = model_core_s_per_image(32, 2, False), model_core_s_per_image(128, 2, False)
    assert est_plain["core_hours"] == round(18 * small / 3600, 3)
    assert est_big["wall_s"] == round((12 * small + 6 * large) / 2, 1)
    assert est_big["core_s_per_image"] == round((12 * small + 6 * large) / 18, 4)
    # 6 scene views of 128 x 128 instead of 32 x 32: the bytes of 6 * 15 * 32 * 32 pixels more.
    per_pixel = 0.35 + 0.04 + 0.06
    assert est_big["bytes"] - est_plain["bytes"] == pytest.approx(6 * 15 * 32 * 32 * per_pixel)
    # A measured cost per image (one at [render].resolution) scales with the model.
    given = estimate(make_plan(big, load_catalogs(big)), core_s_per_image=1.0, cores=1)
    assert given["wall_s"] == round(12 + 6 * large / small, 1)
    text = format_estimate(est_big, big)
    assert "selection scenes at 128 px" in text and "at 32 px" in text
    assert "selection scenes" not in format_estimate(est_plain, plain)


def _size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_build_writes_scene_views_at_their_size_and_verify_accepts_it(make_spec):
    spec = make_spec(
        render=RENDER,
        scenes={**SCENES, "count": 2, "resolution": 64},
        dataset={"shard_size": 4, "max_materials": 2},
    )
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    assert result.exit_code == 0
    index = storage.read_json(result.index_url)
    assert index["spec"]["scenes"]["resolution"] == 64
    sizes = {"object": set(), "scene": set()}
    for shard in index["shards"]:
        for key, members in iter_tar_samples(storage.join(result.version_url, shard["name"])):
            meta = validate_sample({"__key__": key, **members}, image_format="jpg")
            kind = "scene" if "scene_materials" in meta else "object"
            for v, view in enumerate(meta["views"]):
                got = {
                    _size(members[f"view{v}.jpg"]),
                    _size(members[f"view{v}.mask.png"]),
                    _size(members[f"view{v}.matid.png"]),
                }
                sizes[kind] |= got
                mask = Image.open(io.BytesIO(members[f"view{v}.mask.png"]))
                side = mask.size[0]
                crop = object_crop_meta(np.asarray(mask) > 127)
                assert view["object_bbox"] == crop["object_bbox"]
                assert object_bbox_pixels(view["object_bbox"], side, side) == (0, 0, side, side)
    assert sizes == {"object": {(32, 32)}, "scene": {(64, 64)}}
    report = verify_dataset(spec.dataset.output)
    assert report.ok, report.summary()
    card = storage.read_bytes(storage.join(result.version_url, "README.md")).decode()
    assert "Material-selection scenes" in card and "are 64 px" in card


def test_verify_wants_one_size_per_view_and_the_recorded_resolution():
    meta = {"views": [{"resolution": 64}, {"resolution": 32}, {}]}
    good = {
        "view0.jpg": (64, 64),
        "view0.mask.png": (64, 64),
        "view0.matid.png": (64, 64),
        "view1.jpg": (32, 32),
        "view2.jpg": (48, 48),
    }
    assert _size_problems(meta, good) == []
    mixed = {**good, "view0.matid.png": (32, 32)}
    assert _size_problems(meta, mixed) == [
        "view 0: its members differ in size (view0.jpg 64x64, view0.mask.png 64x64, "
        "view0.matid.png 32x32)"
    ]
    wrong = {**good, "view1.jpg": (64, 64)}
    assert _size_problems(meta, wrong) == [
        "view 1: view1.jpg is 64x64, its json says resolution 32"
    ]
