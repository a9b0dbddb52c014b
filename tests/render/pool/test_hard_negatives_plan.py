"""Hard-negative groups: materials rendered on the same mesh, light and camera, view by view."""

from __future__ import annotations

import json

import pool_fakes
import pytest

from phieat.schema import HARD_NEGATIVE_GROUP, parse_key, validate_sample
from render import storage
from render.build import build
from render.negatives import pack_shards
from render.plan import dataset_version, load_catalogs, make_plan
from render.spec import SpecError
from render.verify import iter_tar_samples, verify_dataset

HN = {"group_size": 4}
SHARED = ("mesh", "light", "light_rotation", "light_strength", "camera", "background", "view")
SHARED_META = ("mesh_id", "light_id", "light_rotation", "light_strength", "camera")


@pytest.fixture
def ten_materials(catalog_dir):
    pool_fakes.write_catalogs(catalog_dir, n_materials=10)
    return catalog_dir


def _samples(plan) -> list[tuple[str, dict]]:
    return [(shard.name, s) for shard in plan.shards for s in shard.samples]


def _groups(plan) -> dict[str, list[tuple[str, dict]]]:
    groups: dict[str, list[tuple[str, dict]]] = {}
    for shard_name, sample in _samples(plan):
        groups.setdefault(sample[HARD_NEGATIVE_GROUP], []).append((shard_name, sample))
    return groups


def test_groups_share_mesh_light_and_camera_per_view(make_spec, ten_materials):
    spec = make_spec(hard_negatives=HN, dataset={"views": 3, "shard_size": 8})
    plan = make_plan(spec, load_catalogs(spec))
    groups = _groups(plan)
    # 10 materials in groups of 4: 4 + 4 + 2.
    assert sorted(len(g) for g in groups.values()) == [2, 4, 4]
    assert sorted(groups) == ["hn-0000-000000", "hn-0000-000001", "hn-0000-000002"]
    for members in groups.values():
        samples = [s for _, s in members]
        ids = [s["material"]["id"] for s in samples]
        assert len(set(ids)) == len(ids)  # different materials
        assert len({shard for shard, _ in members}) == 1  # one shard (group_size <= shard_size)
        for v in range(3):
            first = samples[0]["views"][v]
            for sample in samples[1:]:
                job = sample["views"][v]
                assert {k: job[k] for k in SHARED} == {k: first[k] for k in SHARED}
                assert job["material"] == sample["material"] and job["key"] == sample["key"]
        # Views still vary within a sample, and render seeds stay per material.
        assert len({v["mesh"]["id"] for v in samples[0]["views"]}) == 3
        assert len({json.dumps(v["camera"]) for v in samples[0]["views"]}) == 3
        seeds = [v["seed"] for s in samples for v in s["views"]]
        assert len(set(seeds)) == len(seeds)
    # Members are consecutive: the group ids along the plan change only at group ends.
    order = [s[HARD_NEGATIVE_GROUP] for _, s in _samples(plan)]
    runs = [g for i, g in enumerate(order) if i == 0 or order[i - 1] != g]
    assert len(runs) == len(groups)
    # Shards end early rather than split a group (4 + 4 | 2, or 4 + 2 | 4, or 2 + 4 | 4).
    sizes = [len(groups[g]) for g in runs]
    assert [len(shard.samples) for shard in plan.shards] == pack_shards(sizes, 8)
    assert len(plan.shards) == 2


def test_each_sample_number_is_grouped_anew_without_repeating_a_material(make_spec, ten_materials):
    spec = make_spec(hard_negatives=HN, dataset={"samples_per_material": 2, "shard_size": 4})
    plan = make_plan(spec, load_catalogs(spec))
    groups = _groups(plan)
    assert len(groups) == 6 and all(len(g) <= 4 for g in groups.values())
    partitions: dict[int, set[frozenset[str]]] = {}
    for members in groups.values():
        keys = [parse_key(s["key"]) for _, s in members]
        assert len({mid for mid, _ in keys}) == len(keys)
        assert len({g for _, g in keys}) == 1  # one sample number per group
        partitions.setdefault(keys[0][1], set()).add(frozenset(mid for mid, _ in keys))
        assert len({shard for shard, _ in members}) == 1
    assert partitions[0] != partitions[1]
    assert all(len(shard.samples) <= 4 for shard in plan.shards)


def test_groups_are_deterministic_and_follow_the_seed(make_spec, ten_materials):
    spec = make_spec(hard_negatives=HN, dataset={"views": 3})
    catalogs = load_catalogs(spec)
    first = make_plan(spec, catalogs)
    again = make_plan(make_spec(hard_negatives=HN, dataset={"views": 3}), catalogs)
    assert first.to_json() == again.to_json()

    def members(plan) -> set[frozenset[str]]:
        groups = _groups(plan).values()
        return {frozenset(s["material"]["id"] for _, s in g) for g in groups}

    other = make_plan(make_spec(hard_negatives=HN, dataset={"views": 3, "seed": 8}), catalogs)
    assert members(other) != members(first)


def test_off_leaves_plan_and_version_unchanged(make_spec, ten_materials):
    plain = make_spec()
    zero = make_spec(hard_negatives={"group_size": 0})
    on = make_spec(hard_negatives=HN)
    catalogs = load_catalogs(plain)
    assert "hard_negatives" not in plain.to_dict()
    assert "hard_negatives" not in zero.render_settings()
    assert make_plan(plain, catalogs).to_json() == make_plan(zero, catalogs).to_json()
    assert dataset_version(plain, "5.0.1") == dataset_version(zero, "5.0.1")
    assert dataset_version(on, "5.0.1") != dataset_version(plain, "5.0.1")
    assert on.render_settings()["hard_negatives"] == {"group_size": 4}
    for _, sample in _samples(make_plan(zero, catalogs)):
        assert HARD_NEGATIVE_GROUP not in sample
    assert "shard_sizes" not in make_plan(zero, catalogs).generations[0]


def test_group_larger_than_the_catalog_or_the_shard(make_spec, catalog_dir):
    # 6 materials, one group of 6 that is longer than a shard of 4: it runs on.
    spec = make_spec(hard_negatives={"group_size": 50}, dataset={"shard_size": 4})
    plan = make_plan(spec, load_catalogs(spec))
    assert list(_groups(plan)) == ["hn-0000-000000"]
    assert [len(shard.samples) for shard in plan.shards] == [4, 2]
    single = make_spec(hard_negatives={"group_size": 1}, dataset={"shard_size": 4})
    groups = _groups(make_plan(single, load_catalogs(single)))
    assert len(groups) == 6 and all(len(g) == 1 for g in groups.values())


def test_pack_shards_keeps_units_whole_where_they_fit():
    assert pack_shards([4, 4, 4, 2], 10) == [8, 6]
    assert pack_shards([2, 2, 2], 4) == [4, 2]
    assert pack_shards([1, 3, 3], 3) == [1, 3, 3]
    assert pack_shards([5, 1], 3) == [3, 3]  # a unit longer than a shard starts one, runs on
    assert pack_shards([1, 1, 1, 1, 1], 2) == [2, 2, 1]  # units of one: fixed-size chunks


def test_a_grown_catalog_adds_new_groups_and_keeps_old_shards(make_spec, catalog_dir):
    spec = make_spec(hard_negatives=HN, dataset={"shard_size": 4})
    first = make_plan(spec, load_catalogs(spec))
    pool_fakes.write_catalogs(catalog_dir, n_materials=9)
    second = make_plan(spec, load_catalogs(spec), first.generations)
    assert [s.to_dict() for s in second.shards[: len(first.shards)]] == [
        s.to_dict() for s in first.shards
    ]
    new = [s for shard in second.new_shards for s in shard.samples]
    assert {s["material"]["id"] for s in new} == {"mat-006", "mat-007", "mat-008"}
    assert {s[HARD_NEGATIVE_GROUP] for s in new} == {"hn-0001-000000"}


def test_selection_scenes_are_never_grouped(make_spec, ten_materials):
    spec = make_spec(
        hard_negatives=HN, scenes={"count": 3}, render={"passes": ["matid"]}, dataset={"views": 2}
    )
    samples = [s for _, s in _samples(make_plan(spec, load_catalogs(spec)))]
    scenes = [s for s in samples if "scene_materials" in s]
    assert len(scenes) == 3 and all(HARD_NEGATIVE_GROUP not in s for s in scenes)
    regular = [s for s in samples if "scene_materials" not in s]
    assert len(regular) == 10 and all(HARD_NEGATIVE_GROUP in s for s in regular)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"group_size": -1}, r"\[hard_negatives\]\.group_size must be >= 0"),
        ({"group_size": "4"}, r"\[hard_negatives\]\.group_size must be an integer"),
        ({"group_size": 2.5}, r"\[hard_negatives\]\.group_size must be an integer"),
        ({"group_size": True}, r"\[hard_negatives\]\.group_size must be an integer"),
        ({"group_sise": 4}, r"unknown key \[hard_negatives\]\.group_sise.*'group_size'"),
    ],
)
def test_hard_negatives_section_is_strict(make_spec, table, message):
    with pytest.raises(SpecError, match=message) as info:
        make_spec(hard_negatives=table)
    assert "spec.toml" in str(info.value)


def test_built_samples_carry_their_group_and_pass_the_shard_contract(make_spec, ten_materials):
    spec = make_spec(hard_negatives=HN, dataset={"shard_size": 8})
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    assert result.exit_code == 0
    index = storage.read_json(result.index_url)
    assert index["hard_negative_group_size"] == 4
    assert index["spec"]["hard_negatives"] == {"group_size": 4}
    groups: dict[str, list[dict]] = {}
    order = []
    for shard in index["shards"]:
        for key, sample in iter_tar_samples(storage.join(result.version_url, shard["name"])):
            meta = validate_sample({"__key__": key, **sample}, image_format="jpg")
            groups.setdefault(meta[HARD_NEGATIVE_GROUP], []).append(meta)
            order.append(meta[HARD_NEGATIVE_GROUP])
    assert sorted(len(g) for g in groups.values()) == [2, 4, 4]
    runs = [g for i, g in enumerate(order) if i == 0 or order[i - 1] != g]
    assert len(runs) == len(groups)  # written consecutively
    for metas in groups.values():
        for v in range(2):
            seen = {json.dumps({k: m["views"][v][k] for k in SHARED_META}) for m in metas}
            assert len(seen) == 1
    report = verify_dataset(spec.dataset.output)
    assert report.ok, report.summary()
    # The stored snapshot (with its shard sizes) plans the same shards again: nothing to do.
    again = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    assert again.rendered == [] and again.exit_code == 0
