"""Planning material-selection scenes: deterministic, hard cases drawn, old specs unchanged."""

from __future__ import annotations

import json

import numpy as np
import pool_fakes
import pytest

from phieat.schema import parse_key, validate_sample
from render import storage
from render.build import build
from render.plan import dataset_version, load_catalogs, make_plan
from render.scenes import SCENE_GROUP_BASE
from render.spec import SpecError
from render.verify import iter_tar_samples, verify_dataset

SCENES = {"count": 12, "objects": [3, 4], "same_material_pairs": 0.4, "same_colour_pairs": 0.4}
RENDER = {"passes": ["mask", "matid"]}


@pytest.fixture
def family_catalogs(catalog_dir):
    """The tiny catalogs plus materials of other families (colour partners need them)."""
    extra = [
        pool_fakes.material(f"oak-{i:03d}", family="wood", base_color=[0.5, 0.3, 0.1 * i])
        for i in range(3)
    ] + [
        pool_fakes.material(f"slab-{i:03d}", family="concrete", base_color=[0.4, 0.4, 0.1 * i])
        for i in range(3)
    ]
    pool_fakes.write_catalogs(catalog_dir, extra_materials=extra)
    return catalog_dir


def _scene_samples(plan) -> list[dict]:
    return [s for shard in plan.shards for s in shard.samples if "scene_materials" in s]


def test_scene_samples_are_keyed_by_their_first_material(make_spec, family_catalogs):
    spec = make_spec(scenes=SCENES, render=RENDER, dataset={"views": 3, "shard_size": 5})
    plan = make_plan(spec, load_catalogs(spec))
    scenes = _scene_samples(plan)
    assert len(scenes) == 12
    regular = [s for sh in plan.shards for s in sh.samples if "scene_materials" not in s]
    assert len(regular) == 12  # 6 + 6 catalog materials, one sample each
    keys = [s["key"] for sh in plan.shards for s in sh.samples]
    assert len(set(keys)) == len(keys)
    for sample in scenes:
        material_id, group = parse_key(sample["key"])
        assert material_id == sample["material"]["id"] and group >= SCENE_GROUP_BASE
        assert len(sample["views"]) == 3
        first = sample["views"][0]["scene"]
        assert 2 <= len(first["objects"]) <= 3
        assert len(sample["scene_materials"]) >= 2
        assert sample["scene_materials"][0] == sample["material"]
        for view in sample["views"]:
            assert view["scene"] == first  # one arrangement, several cameras and lights
            assert view["material"] == sample["material"]
        lights = {v["light"]["id"] for v in sample["views"]}
        cameras = {json.dumps(v["camera"]) for v in sample["views"]}
        assert len(lights) == 3 and len(cameras) == 3


def test_hard_cases_are_drawn_and_recorded(make_spec, family_catalogs):
    spec = make_spec(scenes=SCENES, render=RENDER)
    scenes = _scene_samples(make_plan(spec, load_catalogs(spec)))
    same_material = same_colour = 0
    for sample in scenes:
        view = sample["views"][0]
        entries = [view["material"]] + [o["material"] for o in view["scene"]["objects"]]
        ids = [json.dumps(e, sort_keys=True) for e in entries]
        same_material += len(set(ids)) < len(ids)
        assert len(sample["scene_materials"]) == len(set(ids))
        for entry in entries:
            match = entry.get("colour_match")
            if not match:
                continue
            same_colour += 1
            source = next(e for e in entries if e["id"] == match["source"])
            assert entry["params"]["base_color"] == match["base_color"]
            assert source["params"]["base_color"][:3] == match["base_color"]
            assert entry.get("family") != source.get("family")
            assert entry["id"] != source["id"]
            # The recoloured material is a material index of its own.
            assert entry in sample["scene_materials"]
            original = next(m for m in spec_materials(spec) if m["id"] == entry["id"])
            assert match["original_base_color"] == original["params"]["base_color"]
    assert same_material >= 2 and same_colour >= 2


def spec_materials(spec) -> list[dict]:
    return load_catalogs(spec).materials


def test_objects_do_not_intersect(make_spec, family_catalogs):
    spec = make_spec(scenes=SCENES, render=RENDER)
    for sample in _scene_samples(make_plan(spec, load_catalogs(spec))):
        scene = sample["views"][0]["scene"]
        placed = [(scene, sample["views"][0]["mesh"])] + [(o, o["mesh"]) for o in scene["objects"]]
        for i, (a, mesh_a) in enumerate(placed):
            for b, mesh_b in placed[i + 1 :]:
                gap = np.linalg.norm(np.subtract(a["location"], b["location"]))
                # Footprint circles: half the diagonal of a square of the largest side.
                size_a, size_b = mesh_a["size_m"] * a["scale"], mesh_b["size_m"] * b["scale"]
                reach = (size_a + size_b) / np.sqrt(2)
                assert gap > reach


def test_scene_plans_are_deterministic(make_spec, family_catalogs):
    spec = make_spec(scenes=SCENES, render=RENDER)
    catalogs = load_catalogs(spec)
    assert make_plan(spec, catalogs).to_json() == make_plan(spec, catalogs).to_json()
    other = make_spec(scenes=SCENES, render=RENDER, dataset={"seed": 99})
    assert make_plan(other, catalogs).to_json() != make_plan(spec, catalogs).to_json()
    more = make_spec(scenes={**SCENES, "count": 13}, render=RENDER)
    # Scene s is drawn from its own generator: adding scenes keeps the earlier ones.
    before = {s["key"]: s["views"] for s in _scene_samples(make_plan(spec, catalogs))}
    after = {s["key"]: s["views"] for s in _scene_samples(make_plan(more, catalogs))}
    assert len(after) == 13 and all(after[k] == v for k, v in before.items())


def test_specs_without_scenes_keep_their_plan_and_version(make_spec, family_catalogs):
    plain = make_spec(render=RENDER)
    zero = make_spec(render=RENDER, scenes={"count": 0, "objects": [2, 5]})
    catalogs = load_catalogs(plain)
    assert "scenes" not in plain.render_settings() and "scenes" not in plain.to_dict()
    assert make_plan(plain, catalogs).to_json() == make_plan(zero, catalogs).to_json()
    assert dataset_version(plain, "5.0.1") == dataset_version(zero, "5.0.1")
    with_scenes = make_spec(render=RENDER, scenes=SCENES)
    assert dataset_version(with_scenes, "5.0.1") != dataset_version(plain, "5.0.1")
    assert _scene_samples(make_plan(plain, catalogs)) == []


@pytest.mark.parametrize(
    ("scenes", "render", "message"),
    [
        ({"count": 2, "colour": 1}, RENDER, r"\[scenes\]\.colour"),
        ({"count": 2, "objects": [1, 3]}, RENDER, r"\[scenes\]\.objects"),
        ({"count": 2, "same_colour_pairs": 1.5}, RENDER, r"\[scenes\]\.same_colour_pairs"),
        ({"count": 2, "same_material_pairs": 0.6, "same_colour_pairs": 0.6}, RENDER, "<= 1"),
        ({"count": 2, "views": 3}, RENDER, r"\[scenes\]\.views"),
        ({"count": 2, "distance": [0.5, 2.0]}, RENDER, r"\[scenes\]\.distance"),
        ({"count": 2}, {"passes": ["mask"]}, r"\[render\]\.passes"),
        ({"count": "2"}, RENDER, r"\[scenes\]\.count must be an integer"),
    ],
)
def test_scenes_section_is_strict(make_spec, scenes, render, message):
    with pytest.raises(SpecError, match=message):
        make_spec(scenes=scenes, render=render)


def test_built_scene_samples_pass_the_shard_contract(make_spec, family_catalogs):
    spec = make_spec(
        scenes={**SCENES, "count": 2},
        render=RENDER,
        dataset={"shard_size": 20, "max_materials": 2},
    )
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    assert result.exit_code == 0
    version_url = result.version_url
    index = storage.read_json(result.index_url)
    found = 0
    for shard in index["shards"]:
        for key, sample in iter_tar_samples(storage.join(version_url, shard["name"])):
            meta = validate_sample({"__key__": key, **sample}, image_format="jpg")
            if "scene_materials" not in meta:
                continue
            found += 1
            assert meta["scene_materials"][0] == meta["material"]["id"]
            assert set(meta["scene_materials"]) <= set(index["materials"])
            assert {"view0.matid.png", "view1.matid.png"} <= set(sample)
    assert found == 2
    report = verify_dataset(spec.dataset.output)
    assert report.ok, report.summary()
