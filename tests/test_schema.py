"""The shard contract: keys, members, metadata and index validation."""

from __future__ import annotations

import copy
import json

import pytest

from phieat import schema
from phieat.schema import SchemaError


def make_meta(material_id: str = "oak-017", group: int = 1, views: int = 2) -> dict:
    view = {
        "mesh_id": "sphere",
        "light_id": "hdri-city",
        "light_rotation": 12.5,
        "light_strength": 1.0,
        "camera": {"distance": 3.0, "elevation": 10.0, "azimuth": 30.0, "lens_mm": 50.0},
        "seed": 7,
        "samples": 4,
        "view_transform": "Standard",
        "render_time_s": 0.5,
    }
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "key": schema.make_key(material_id, group),
        "material": {"id": material_id, "category": "wood", "source": "procedural", "params": {}},
        "views": [dict(view, mesh_id=f"mesh-{i}") for i in range(views)],
        "blender_version": "5.0.1",
        "catalog_snapshot": {"materials": "abc", "meshes": "def", "lights": "0123"},
        "plan_hash": "feedbeef",
    }


def make_sample(meta: dict) -> dict:
    sample = {"__key__": meta["key"], "json": json.dumps(meta).encode()}
    for i in range(len(meta["views"])):
        sample[schema.view_member(i)] = b"\xff\xd8fake-jpeg"
    return sample


def make_index() -> dict:
    return {
        "schema_version": 1,
        "dataset": "tiny",
        "version": "v-0123abcd",
        "complete": True,
        "views_per_sample": 2,
        "image_format": "jpg",
        "spec_hash": "aa",
        "catalog_hashes": {"materials": "bb"},
        "shards": [
            {
                "name": "shard-000000.tar",
                "samples": 3,
                "bytes": 100,
                "sha256": "c",
                "plan_hash": "d",
            }
        ],
        "failures": [],
        "materials": ["oak-017"],
        "categories": ["wood"],
        "licences": {"CC0-1.0": 1},
    }


def test_key_round_trip():
    key = schema.make_key("brushed-bronze-3", 12)
    assert key == "brushed-bronze-3__g0012"
    assert schema.parse_key(key) == ("brushed-bronze-3", 12)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("oak.017", "dot"),
        ("Oak-017", "slug"),
        ("oak--017", "slug"),
        ("oak__017", "'__'"),
        ("-oak", "slug"),
        ("", "slug"),
    ],
)
def test_bad_material_ids_are_rejected_with_reason(bad, words):
    with pytest.raises(SchemaError, match=words):
        schema.validate_material_id(bad)


def test_dotted_key_rejected():
    with pytest.raises(SchemaError, match="dot"):
        schema.parse_key("oak.017__g0001")
    with pytest.raises(SchemaError, match="__g"):
        schema.parse_key("oak-017")


def test_slugify():
    assert schema.slugify("Wood Planks 03 (2K).v2") == "wood-planks-03-2k-v2"
    with pytest.raises(SchemaError):
        schema.slugify("...")


def test_sample_round_trip():
    meta = make_meta(views=3)
    sample = make_sample(meta)
    assert schema.validate_sample(sample, image_format="jpg") == meta
    # already-decoded json works too (as WebDataset's decoder yields it)
    decoded = dict(sample, json=meta)
    assert schema.validate_sample(decoded)["key"] == meta["key"]


def test_unknown_schema_version_rejected():
    meta = make_meta()
    meta["schema_version"] = 99
    with pytest.raises(SchemaError, match="schema_version 99"):
        schema.validate_meta(meta)
    index = make_index()
    index["schema_version"] = 2
    with pytest.raises(SchemaError, match="index.json has schema_version 2"):
        schema.validate_index(index)


def test_missing_view_member_named():
    sample = make_sample(make_meta(views=3))
    del sample["view2.jpg"]
    with pytest.raises(SchemaError, match="missing member view2.jpg"):
        schema.validate_sample(sample, image_format="jpg")


def test_missing_meta_member_named():
    sample = make_sample(make_meta())
    del sample["json"]
    with pytest.raises(SchemaError, match="missing member 'json'"):
        schema.validate_sample(sample)


def test_missing_and_mistyped_fields_named():
    meta = make_meta()
    del meta["views"][1]["light_id"]
    with pytest.raises(SchemaError, match=r"views\[1\] is missing the field 'light_id'"):
        schema.validate_meta(meta)
    meta = make_meta()
    meta["views"][0]["seed"] = "7"
    with pytest.raises(SchemaError, match=r"views\[0\].seed must be int"):
        schema.validate_meta(meta)
    meta = make_meta()
    meta["views"][0]["samples"] = True
    with pytest.raises(SchemaError, match="got a boolean"):
        schema.validate_meta(meta)


def test_meta_must_match_key():
    meta = make_meta()
    sample = make_sample(meta)
    sample["__key__"] = "pine-001__g0001"
    with pytest.raises(SchemaError, match="does not match the tar key"):
        schema.validate_sample(sample)
    meta = make_meta()
    meta["material"]["id"] = "pine-001"
    with pytest.raises(SchemaError, match="material.id"):
        schema.validate_meta(meta)


def test_single_view_rejected():
    meta = make_meta(views=2)
    meta["views"] = meta["views"][:1]
    with pytest.raises(SchemaError, match="at least 2 views"):
        schema.validate_meta(meta)


def test_unexpected_member_rejected():
    sample = make_sample(make_meta())
    sample["view0.pickle"] = b"..."
    with pytest.raises(SchemaError, match="unexpected members"):
        schema.validate_sample(sample)


def test_optional_passes_accepted():
    sample = make_sample(make_meta())
    sample[schema.mask_member(0)] = b"png"
    sample[schema.matid_member(1)] = b"png"
    schema.validate_sample(sample)


def test_index_validation():
    schema.validate_index(make_index())
    index = make_index()
    index["shards"].append(copy.deepcopy(index["shards"][0]))
    with pytest.raises(SchemaError, match="listed twice"):
        schema.validate_index(index)
    index = make_index()
    del index["complete"]
    with pytest.raises(SchemaError, match="'complete'"):
        schema.validate_index(index)
    index = make_index()
    index["materials"] = ["bad.id"]
    with pytest.raises(SchemaError, match="dot"):
        schema.validate_index(index)


def test_names():
    assert schema.shard_name(3) == "shard-000003.tar"
    assert schema.sidecar_name("shard-000003.tar") == "shard-000003.json"
    assert schema.view_member(2, "png16") == "view2.png"
    with pytest.raises(SchemaError, match="image format"):
        schema.view_member(0, "gif")


def test_stable_label_is_stable_and_64_bit():
    a = schema.stable_label("oak-017")
    assert a == schema.stable_label("oak-017")
    assert a != schema.stable_label("oak-018")
    assert -(2**63) <= a < 2**63
    # fixed value: a change here would silently relabel every dataset
    assert a == int.from_bytes(
        __import__("hashlib").blake2b(b"oak-017", digest_size=8).digest(), "little", signed=True
    )


def test_hash_obj_ignores_key_order():
    assert schema.hash_obj({"a": 1, "b": 2}) == schema.hash_obj({"b": 2, "a": 1})
    assert schema.hash_obj({"a": 1}) != schema.hash_obj({"a": 2})


def test_hard_negative_group_is_optional_and_checked_when_present():
    meta = make_meta()
    assert schema.HARD_NEGATIVE_GROUP not in meta
    schema.validate_sample(make_sample(meta))  # shards written before the field stay valid
    meta[schema.HARD_NEGATIVE_GROUP] = "hn-0000-000012"
    assert schema.validate_sample(make_sample(meta))["hard_negative_group"] == "hn-0000-000012"
    for bad, words in ((12, "must be str"), ("hn.0000", "not a slug"), ("", "not a slug")):
        meta[schema.HARD_NEGATIVE_GROUP] = bad
        with pytest.raises(SchemaError, match=words) as info:
            schema.validate_meta(meta)
        assert "hard_negative_group" in str(info.value)


def test_index_hard_negative_group_size_is_optional():
    index = make_index()
    schema.validate_index(index)
    index["hard_negative_group_size"] = 4
    schema.validate_index(index)
    for bad, words in (("4", "must be int"), (True, "boolean"), (0, ">= 1")):
        index["hard_negative_group_size"] = bad
        with pytest.raises(SchemaError, match=words) as info:
            schema.validate_index(index)
        assert "hard_negative_group_size" in str(info.value)
