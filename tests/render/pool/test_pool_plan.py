"""The planner is deterministic, spreads meshes/lights over views, and grows by generations."""

from __future__ import annotations

import json

import pool_fakes
import pytest

from render.estimate import CORE_S_PER_PIXEL_SAMPLE, describe, estimate
from render.plan import (
    PlanError,
    dataset_version,
    load_catalog,
    load_catalogs,
    make_plan,
)


def test_same_spec_and_catalogs_give_byte_identical_plans(make_spec):
    spec = make_spec(dataset={"views": 3, "shard_size": 4})
    a = make_plan(spec, load_catalogs(spec)).to_json()
    b = make_plan(make_spec(dataset={"views": 3, "shard_size": 4}), load_catalogs(spec)).to_json()
    assert a == b
    other = make_plan(
        make_spec(dataset={"views": 3, "shard_size": 4, "seed": 8}), load_catalogs(spec)
    )
    assert other.to_json() != a


def test_plan_layout_and_view_jobs(make_spec):
    spec = make_spec(dataset={"views": 3, "shard_size": 4, "samples_per_material": 2})
    plan = make_plan(spec, load_catalogs(spec))
    assert [s.name for s in plan.shards] == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    keys = [s["key"] for shard in plan.shards for s in shard.samples]
    assert len(keys) == len(set(keys)) == 12
    assert {k.split("__")[1] for k in keys} == {"g0000", "g0001"}
    for shard in plan.shards:
        assert len(shard.plan_hash) == 16
        for sample in shard.samples:
            jobs = sample["views"]
            assert [j["view"] for j in jobs] == [0, 1, 2]
            # 3 meshes and 3 lights in the catalogs: every view gets a different one.
            assert len({j["mesh"]["id"] for j in jobs}) == 3
            assert len({j["light"]["id"] for j in jobs}) == 3
            assert len({j["seed"] for j in jobs}) == 3
            job = jobs[0]
            assert set(job) == {
                "key",
                "view",
                "material",
                "mesh",
                "light",
                "light_rotation",
                "light_strength",
                "camera",
                "background",
                "render",
                "seed",
            }
            assert set(job["camera"]) == {"distance", "elevation", "azimuth", "lens_mm"}
            assert job["render"]["resolution"] == 32 and job["render"]["passes"] == []


def test_fewer_meshes_than_views_uses_all_before_repeating(make_spec, catalog_dir):
    pool_fakes.write_jsonl(
        catalog_dir / "meshes.jsonl", [pool_fakes.mesh("m-a"), pool_fakes.mesh("m-b")]
    )
    spec = make_spec(dataset={"views": 4})
    for shard in make_plan(spec, load_catalogs(spec)).shards:
        for sample in shard.samples:
            ids = [j["mesh"]["id"] for j in sample["views"]]
            assert sorted(ids[:2]) == ["m-a", "m-b"] and sorted(ids[2:]) == ["m-a", "m-b"]


def test_sample_views_do_not_depend_on_other_materials(make_spec, catalog_dir):
    spec = make_spec(dataset={"shard_size": 100})
    before = {s["key"]: s for s in make_plan(spec, load_catalogs(spec)).shards[0].samples}
    pool_fakes.write_catalogs(catalog_dir, n_materials=9)
    after = {s["key"]: s for s in make_plan(spec, load_catalogs(spec)).shards[0].samples}
    assert set(before) < set(after)
    assert all(before[k] == after[k] for k in before)


def test_appending_materials_keeps_old_shards_and_adds_a_generation(make_spec, catalog_dir):
    spec = make_spec()
    first = make_plan(spec, load_catalogs(spec))
    # Grow the catalogs: new materials, a new mesh and a new light; an old entry changes too.
    pool_fakes.write_catalogs(
        catalog_dir, n_materials=9, meshes=("uv_sphere", "cube", "torus", "cone")
    )
    mats = load_catalog(catalog_dir / "materials.jsonl", "materials")
    mats[0]["params"]["roughness"] = 0.9
    pool_fakes.write_jsonl(catalog_dir / "materials.jsonl", mats)
    second = make_plan(spec, load_catalogs(spec), first.generations)
    assert [s.to_dict() for s in second.shards[: len(first.shards)]] == [
        s.to_dict() for s in first.shards
    ]
    new = second.new_shards
    assert [s.index for s in new] == [3, 4] and all(s.generation == 1 for s in new)
    assert {s["material"]["id"] for shard in new for s in shard.samples} == {
        "mat-006",
        "mat-007",
        "mat-008",
    }
    assert new[0].catalog_snapshot["generation"] == 1
    assert new[0].catalog_snapshot["counts"]["meshes"] == 4
    # Nothing new: no third generation.
    third = make_plan(spec, load_catalogs(spec), second.generations)
    assert third.new is None and len(third.shards) == 5


def test_resample_on_growth_draws_old_materials_with_new_assets(make_spec, catalog_dir):
    spec = make_spec(dataset={"resample_on_growth": True})
    first = make_plan(spec, load_catalogs(spec))
    pool_fakes.write_catalogs(catalog_dir, meshes=("uv_sphere", "cube", "torus", "cone", "monkey"))
    second = make_plan(spec, load_catalogs(spec), first.generations)
    samples = [s for shard in second.new_shards for s in shard.samples]
    assert len(samples) == 6 and all(s["key"].endswith("__g0001") for s in samples)
    assert {j["mesh"]["id"] for s in samples for j in s["views"]} == {"mesh-cone", "mesh-monkey"}


def test_max_materials_and_split_filter(make_spec, catalog_dir):
    extra = [pool_fakes.material("val-001", split="val")]
    pool_fakes.write_catalogs(catalog_dir, extra_materials=extra)
    spec = make_spec(dataset={"max_materials": 4})
    plan = make_plan(spec, load_catalogs(spec))
    ids = {s["material"]["id"] for shard in plan.shards for s in shard.samples}
    assert len(ids) == 4 and "val-001" not in ids
    val = make_spec(catalogs={"split": "val", "mesh_split": "all", "light_split": "all"})
    assert plan_ids(val) == {"val-001"}
    with pytest.raises(PlanError, match="mesh_split"):
        make_plan(make_spec(catalogs={"split": "val"}), load_catalogs(spec))


def plan_ids(spec):
    return {
        s["material"]["id"]
        for shard in make_plan(spec, load_catalogs(spec)).shards
        for s in shard.samples
    }


def test_catalog_errors_name_file_and_line(tmp_path):
    path = tmp_path / "materials.jsonl"
    path.write_text(json.dumps({"id": "Bad.Id", "category": "x", "source": "procedural"}) + "\n")
    with pytest.raises(PlanError, match=r"materials.jsonl:1.*missing 'licence'"):
        load_catalog(path, "materials")
    entry = pool_fakes.material("a-b")
    entry["id"] = "a.b"
    path.write_text(json.dumps(entry) + "\n")
    with pytest.raises(PlanError, match="contains a dot"):
        load_catalog(path, "materials")
    with pytest.raises(PlanError, match="does not exist"):
        load_catalog(tmp_path / "nope.jsonl", "meshes")


def test_version_depends_on_render_settings_and_blender(make_spec):
    spec = make_spec()
    assert dataset_version(spec, "5.0.1") == dataset_version(spec, "Blender 5.0.1 (hash x)")
    assert dataset_version(spec, "5.0.1") != dataset_version(spec, "5.1.0")
    assert dataset_version(spec, "5.0.1") != dataset_version(
        make_spec(render={"samples": 3}), "5.0.1"
    )
    assert dataset_version(spec, "5.0.1") == dataset_version(
        make_spec(output="memory://elsewhere"), "5.0.1"
    )


def test_estimate_scales_with_pixels_and_samples(make_spec):
    small = make_spec(render={"resolution": 64, "samples": 8})
    big = make_spec(render={"resolution": 128, "samples": 32})
    est_small = estimate(make_plan(small, load_catalogs(small)))
    est_big = estimate(make_plan(big, load_catalogs(big)))
    assert est_small["images"] == est_big["images"] == 12
    assert est_big["core_hours"] > est_small["core_hours"] > 0
    # path tracing scales with pixels x samples on top of a fixed cost per view
    extra = est_big["core_s_per_image"] - est_small["core_s_per_image"]
    assert extra == pytest.approx(
        CORE_S_PER_PIXEL_SAMPLE * (128 * 128 * 32 - 64 * 64 * 8), abs=1e-3
    )
    assert est_big["bytes"] > 1.5 * est_small["bytes"]  # tar and json overheads are fixed
    fixed = estimate(make_plan(small, load_catalogs(small)), core_s_per_image=3600.0)
    assert fixed["core_hours"] == 12.0
    assert "3 shards, 6 samples, 12 images" in describe(make_plan(small, load_catalogs(small)))
