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
    with pytest.raises(
        SchemaError,
        match=r"^sample oak-017__g0001 json has schema_version 99; this phieat reads \[1\]\. "
        r"Upgrade phieat or re-render the dataset\.$",
    ):
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
    meta = make_meta()
    sample = make_sample(meta)
    sample[schema.mask_member(0)] = b"png"
    sample[schema.matid_member(1)] = b"png"
    assert schema.mask_member(0) == "view0.mask.png"
    assert schema.matid_member(1) == "view1.matid.png"
    assert schema.validate_sample(sample, image_format="jpg") == meta
    # a pass of a view the metadata does not list is not an optional pass but a stray member
    sample[schema.mask_member(2)] = b"png"
    with pytest.raises(SchemaError, match=r"unexpected members \['view2.mask.png'\]"):
        schema.validate_sample(sample, image_format="jpg")


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
    with pytest.raises(SchemaError, match=r"shard name 'shard-000003.tgz' does not end in .tar"):
        schema.sidecar_name("shard-000003.tgz")
    assert schema.view_member(2, "png16") == "view2.png"
    with pytest.raises(SchemaError, match="image format"):
        schema.view_member(0, "gif")


def test_stable_label_is_stable_and_64_bit():
    a = schema.stable_label("oak-017")
    assert a == schema.stable_label("oak-017")
    assert a != schema.stable_label("oak-018")
    assert -(2**63) <= a < 2**63
    # Fixed values, recorded once: a change here would silently relabel every dataset.
    assert a == -1683899350918837021
    assert schema.stable_label("brushed-bronze-3") == -602493738462640823


def test_hash_obj_ignores_key_order():
    assert schema.hash_obj({"a": 1, "b": 2}) == schema.hash_obj({"b": 2, "a": 1})
    assert schema.hash_obj({"a": 1}) != schema.hash_obj({"a": 2})
    # Fixed values, recorded once: plan hashes and dataset versions are built on these.
    assert schema.canonical_json({"b": [1, 2.5, "\u00e9"], "a": None}) == (
        '{"a":null,"b":[1,2.5,"\\u00e9"]}'
    )
    assert schema.hash_obj({"a": 1, "b": 2}) == "43258cff783fe703"
    assert schema.hash_obj({"a": 1, "b": 2}, length=64) == (
        "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
    )


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


def test_crop_meta_is_optional_and_checked_when_present():
    meta = make_meta()
    schema.validate_sample(make_sample(meta))  # shards written before the fields stay valid
    good = {schema.OBJECT_BBOX: [0.25, 0.125, 0.75, 1.0], schema.OBJECT_GRID: "00ff" * 2}
    meta["views"][0].update(good)
    meta["views"][1].update({schema.OBJECT_BBOX: None, schema.OBJECT_GRID: ""})
    schema.validate_sample(make_sample(meta))
    bad_values = (
        ({schema.OBJECT_BBOX: [0.5, 0.0, 0.5, 1.0]}, "0 <= x0 < x1 <= 1"),
        ({schema.OBJECT_BBOX: [0.0, 0.0, 1.0, 1.5]}, "0 <= y0 < y1 <= 1"),
        ({schema.OBJECT_BBOX: [0.0, 0.0, 1.0]}, "is not"),
        ({schema.OBJECT_BBOX: [0, 0, True, 1]}, "is not"),
        ({schema.OBJECT_GRID: "00ff00"}, "square grid"),
        ({schema.OBJECT_GRID: "zz" * 4}, "hex digits"),
        ({schema.OBJECT_GRID: 7}, "hex string"),
        ({schema.OBJECT_BBOX: None}, "empty when"),
    )
    for change, words in bad_values:
        meta["views"][0] = {**meta["views"][0], **good, **change}
        with pytest.raises(SchemaError, match=words) as info:
            schema.validate_meta(meta)
        assert "views[0]" in str(info.value)
    meta["views"][0] = dict(meta["views"][0], **good)
    del meta["views"][0][schema.OBJECT_GRID]
    with pytest.raises(SchemaError, match="without the other"):
        schema.validate_meta(meta)


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


def test_slugify_trims_hyphens_and_length():
    assert schema.slugify("  --Oak   Wood!!  ") == "oak-wood"
    assert schema.slugify("__Brushed.Bronze__") == "brushed-bronze"
    # cut at MAX_ID_LENGTH where a hyphen falls: the cut end is trimmed too
    text = "a" * (schema.MAX_ID_LENGTH - 1) + " b"
    assert schema.slugify(text) == "a" * (schema.MAX_ID_LENGTH - 1)
    with pytest.raises(SchemaError, match=r"cannot make an ID from '\.\.\.': no letters or digits"):
        schema.slugify("...")


def test_sample_without_key_or_with_broken_json_is_named():
    sample = make_sample(make_meta())
    del sample["__key__"]
    with pytest.raises(SchemaError, match="^sample has no __key__$"):
        schema.validate_sample(sample)
    sample = make_sample(make_meta())
    sample["json"] = b'{"key": '
    with pytest.raises(SchemaError, match=r"^sample oak-017__g0001: json member is not valid JSON"):
        schema.validate_sample(sample)
    sample["json"] = json.dumps(make_meta())  # text (not bytes) is read as well
    assert schema.validate_sample(sample)["key"] == "oak-017__g0001"


def test_index_errors_name_the_file_and_field():
    with pytest.raises(SchemaError, match=r"^index.json must be a JSON object$"):
        schema.validate_index(["not", "a", "mapping"])
    cases = [
        (lambda i: i.pop("dataset"), r"^v1/index.json is missing the field 'dataset'$"),
        (lambda i: i.update(views_per_sample=1), r"^v1/index.json.views_per_sample must be >= 2$"),
        (
            lambda i: i.update(image_format="gif"),
            r"^v1/index.json.image_format 'gif' is not one of \['exr', 'jpg', 'png', 'png16'\]$",
        ),
        (
            lambda i: i["shards"][0].pop("sha256"),
            r"^v1/index.json.shards\[0\] is missing the field 'sha256'$",
        ),
        (
            lambda i: i.update(hard_negative_group_size="4"),
            r"^v1/index.json.hard_negative_group_size must be int, got str$",
        ),
    ]
    for change, message in cases:
        index = make_index()
        change(index)
        with pytest.raises(SchemaError, match=message):
            schema.validate_index(index, where="v1/index.json")
    index = make_index()
    index["views_per_sample"] = 2
    assert schema.validate_index(index, where="v1/index.json") is index


def test_wrong_types_and_lengths_are_named():
    with pytest.raises(SchemaError, match=r"^material id must be a string, got int$"):
        schema.validate_material_id(17)
    too_long = "a" * (schema.MAX_ID_LENGTH + 1)
    with pytest.raises(
        SchemaError, match=rf"^material id '{too_long}' is longer than 120 characters$"
    ):
        schema.validate_material_id(too_long)
    assert schema.validate_material_id("a" * schema.MAX_ID_LENGTH) == "a" * 120
    with pytest.raises(SchemaError, match=r"^sample key must be a string, got int$"):
        schema.parse_key(17)
    with pytest.raises(SchemaError, match=r"^group must be a non-negative integer, got -1$"):
        schema.make_key("oak-017", -1)
    with pytest.raises(SchemaError, match=r"^group must be a non-negative integer, got '1'$"):
        schema.make_key("oak-017", "1")
    assert schema.make_key("oak-017", 12345) == "oak-017__g12345"
    assert schema.parse_key("oak-017__g12345") == ("oak-017", 12345)


def test_meta_field_errors_name_the_place():
    meta = make_meta()
    meta["views"][1]["light_rotation"] = "12"
    with pytest.raises(
        SchemaError,
        match=r"^sample oak-017__g0001 json.views\[1\].light_rotation must be int or float, got str$",
    ):
        schema.validate_meta(meta)
    meta = make_meta()
    meta["views"][0]["view_transform"] = "Filmic"
    with pytest.raises(
        SchemaError,
        match=r"^sample oak-017__g0001 json.views\[0\].view_transform 'Filmic' is not one of "
        r"\['Standard', 'AgX'\]$",
    ):
        schema.validate_meta(meta)
    meta = make_meta()
    del meta["material"]["category"]
    with pytest.raises(
        SchemaError, match=r"^sample oak-017__g0001 json.material is missing the field 'category'$"
    ):
        schema.validate_meta(meta)
    meta = make_meta()
    meta["material"] = ["oak"]
    with pytest.raises(
        SchemaError, match=r"^sample oak-017__g0001 json.material must be dict, got list$"
    ):
        schema.validate_meta(meta)
    with pytest.raises(SchemaError, match=r"^sample pine-001__g0002 json must be a JSON object$"):
        schema.validate_meta(["not", "a", "mapping"], key="pine-001__g0002")
    meta = make_meta()
    meta["views"][0]["view_transform"] = "AgX"  # both view transforms are accepted
    meta["views"][1]["light_rotation"] = 12  # an int where a float is allowed
    assert schema.validate_meta(meta, key="oak-017__g0001") is meta


def test_messages_name_the_sample_and_field_in_full():
    with pytest.raises(
        SchemaError,
        match=r"^material id 'oak\.017' contains a dot: WebDataset cuts sample keys at the first "
        r"dot, so dots are not allowed \(use hyphens\)$",
    ):
        schema.validate_material_id("oak.017")
    with pytest.raises(
        SchemaError,
        match=r"^material id 'Oak' is not a slug: use lowercase letters, digits and single "
        r"hyphens, not at the start or end$",
    ):
        schema.validate_material_id("Oak")
    assert schema.make_key("oak-017", 0) == "oak-017__g0000"  # group 0 is the first group
    with pytest.raises(
        SchemaError,
        match=r"^sample pine-001__g0001 json: key field 'oak-017__g0001' does not match the tar "
        r"key 'pine-001__g0001'$",
    ):
        schema.validate_meta(make_meta(), key="pine-001__g0001")
    meta = make_meta()
    del meta["key"]
    with pytest.raises(SchemaError, match=r"^sample \? json is missing the field 'key'$"):
        schema.validate_meta(meta)
    meta = make_meta()
    meta["views"][1] = "view"
    with pytest.raises(
        SchemaError, match=r"^sample oak-017__g0001 json.views\[1\] must be a JSON object, got str$"
    ):
        schema.validate_meta(meta)
    meta = make_meta()
    meta[schema.HARD_NEGATIVE_GROUP] = "hn.1"
    with pytest.raises(
        SchemaError,
        match=r"^sample oak-017__g0001 json.hard_negative_group 'hn.1' is not a slug \(lowercase "
        r"letters, digits and single hyphens, e.g. 'hn-0000-000012'\)$",
    ):
        schema.validate_meta(meta)
    meta = make_meta()
    meta[schema.HARD_NEGATIVE_GROUP] = 12
    with pytest.raises(
        SchemaError, match=r"^sample oak-017__g0001 json.hard_negative_group must be str, got int$"
    ):
        schema.validate_meta(meta)


def test_meta_that_is_not_an_object_is_a_schema_error():
    # without a key to name the sample by, the check must not read a field of a non-object
    for bad in (["a", "list"], "text", 7):
        with pytest.raises(SchemaError, match=r"^sample \? json must be a JSON object$"):
            schema.validate_meta(bad)
