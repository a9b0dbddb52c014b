"""A dataset version read whole by other loaders: Hugging Face ``datasets``, ``wids`` and plain
``webdataset``, each compared sample by sample with what the tars hold.

How the json is compared with ``datasets``: its features are the union of every sample's json,
so a key that a sample lacks (a parameter of another family, ``scene_materials`` outside the
scene) comes back as ``None``. ``drop_nulls`` removes every ``None``-valued key at every depth;
the row's json after ``drop_nulls`` must equal the tar's json exactly (which holds no null), so
no value is lost or changed and nothing but nulls is added.
"""

from __future__ import annotations

import io
import json
import random
import stat

import numpy as np
import pytest
import yaml
from interop_data import FAMILIES, family_materials
from PIL import Image

from phieat import schema
from render import card
from render.verify import verify_dataset

datasets = pytest.importorskip("datasets", reason="needs the dev extra (datasets)")
wids = pytest.importorskip("wids", reason="needs the dev extra (wids)")
wds = pytest.importorskip("webdataset", reason="needs the train extra (webdataset)")


def drop_nulls(value):
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def has_null(value) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(has_null(v) for v in value)
    return False


def pixels(data) -> np.ndarray:
    image = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    return np.asarray(image)


def front_matter(version) -> dict:
    return card.read_front_matter((version / schema.CARD_NAME).read_text())


def check_row(row: dict, truth: dict) -> None:
    """One ``datasets`` row against the tar: json, every image member, key."""
    members = truth[row["__key__"]]
    tar_json = json.loads(members["json"])
    assert not has_null(tar_json)
    assert drop_nulls(row["json"]) == tar_json
    for member, data in members.items():
        if member == "json":
            continue
        image = row[member]
        assert isinstance(image, Image.Image), member
        if member.endswith(".mask.png"):
            assert image.mode == "L"
        if member.endswith(".matid.png"):
            assert image.mode in ("I;16", "I")
        assert np.array_equal(pixels(image), pixels(data)), member
    absent = [m for m in row if m not in members and not m.startswith("__")]
    assert all(row[m] is None for m in absent)


# ----------------------------------------------------------------------------- the files


def test_card_and_wids_list_every_shard_and_verify_passes(version, truth):
    index = json.loads((version / schema.INDEX_NAME).read_text())
    report = verify_dataset(str(version))
    assert report.ok, report.summary()
    meta = front_matter(version)
    shards = [s["name"] for s in index["shards"]]
    assert len(shards) == 3 and index["samples"] == len(truth) == 6
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": shards}]}
    ]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 6
    listed = json.loads((version / schema.WIDS_NAME).read_text())
    assert listed["wids_version"] == 1
    assert [(s["url"], s["nsamples"]) for s in listed["shardlist"]] == [
        (s["name"], s["samples"]) for s in index["shards"]
    ]
    # The json struct is the union: every params key of every family is declared.
    features = {f["name"]: f for f in meta["dataset_info"]["features"]}
    material = {f["name"]: f for f in features["json"]["struct"]}["material"]
    params = {f["name"] for f in {f["name"]: f for f in material["struct"]}["params"]["struct"]}
    keys = [set(json.loads(m["json"])["material"]["params"]) for m in truth.values()]
    assert params == set().union(*keys) and len(params) > max(len(k) for k in keys)
    assert len({e["family"] for e in family_materials()}) == FAMILIES
    assert features["view0.jpg"]["dtype"] == "image"
    assert features["view1.mask.png"]["dtype"] == features["view1.matid.png"]["dtype"] == "image"
    body = (version / schema.CARD_NAME).read_text().split("---\n", 2)[2]
    assert "| materials | CC0-1.0 |" in body and "load_dataset" in body


def test_index_lists_what_the_build_used(version, truth):
    index = json.loads((version / schema.INDEX_NAME).read_text())
    metas = [json.loads(m["json"]) for m in truth.values()]
    views = [v for meta in metas for v in meta["views"]]
    assert set(index[schema.INDEX_MESHES]) >= {v["mesh_id"] for v in views}
    assert set(index[schema.INDEX_LIGHTS]) == {v["light_id"] for v in views}
    assert set(index[schema.INDEX_MATERIAL_GROUPS]) == {m["material"]["group"] for m in metas} | {
        e["group"] for e in family_materials() if e["id"] in index["materials"]
    }


def test_files_are_readable_by_group_and_others_under_umask_022(version):
    names = [schema.INDEX_NAME, schema.CARD_NAME, schema.WIDS_NAME, schema.FAILURES_NAME]
    names += [p.name for p in version.glob("shard-*")]
    assert len(names) == 4 + 6
    for name in names:
        mode = stat.S_IMODE((version / name).stat().st_mode)
        assert mode & 0o044 == 0o044, f"{name} has mode {mode:o}"
        assert mode & 0o022 == 0, f"{name} has mode {mode:o}"


def test_verify_reports_a_card_or_wids_list_that_disagrees(version, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(version, copy)
    listed = json.loads((copy / schema.WIDS_NAME).read_text())
    listed["shardlist"][0]["nsamples"] += 1
    (copy / schema.WIDS_NAME).write_text(json.dumps(listed))
    text = (copy / schema.CARD_NAME).read_text()
    (copy / schema.CARD_NAME).write_text(text.replace("dtype: image", "dtype: binary", 1))
    report = verify_dataset(str(copy))
    assert any(p.startswith(f"{schema.WIDS_NAME}: shard list") for p in report.problems)
    assert any("dataset_info.features differ" in p for p in report.problems)
    quick = verify_dataset(str(copy), deep=False)
    assert len(quick.problems) == 1  # features are compared only when reading the shards
    (copy / schema.CARD_NAME).unlink()
    assert any(p.startswith(f"{schema.CARD_NAME}:") for p in verify_dataset(str(copy)).problems)


# ----------------------------------------------------------------------------- datasets


def test_load_dataset_on_the_folder_reads_every_sample(version, truth, tmp_path):
    ds = datasets.load_dataset(str(version), cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"]
    assert ds["train"].num_rows == len(truth)
    assert sorted(ds["train"]["__key__"]) == sorted(truth)
    for row in ds["train"]:
        check_row(row, truth)


def test_load_dataset_streaming_reads_every_sample(version, truth):
    ds = datasets.load_dataset(str(version), streaming=True)
    seen = []
    for row in ds["train"]:
        check_row(row, truth)
        seen.append(row["__key__"])
    assert sorted(seen) == sorted(truth)


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_webdataset_on_the_shard_list(version, truth, tmp_path, streaming):
    shards = [str(p) for p in sorted(version.glob("shard-*.tar"))]
    features = datasets.Features._from_yaml_list(front_matter(version)["dataset_info"]["features"])
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": shards},
        features=features,
        streaming=streaming,
        cache_dir=str(tmp_path / "hf"),
    )
    rows = list(ds["train"])
    assert sorted(r["__key__"] for r in rows) == sorted(truth)
    for row in rows:
        check_row(row, truth)


# ----------------------------------------------------------------------------- wids, webdataset


def test_wids_random_access_by_index_equals_the_tars(version, truth, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids"))
    ds = wids.ShardListDataset(str(version / schema.WIDS_NAME), transformations=[])
    assert len(ds) == len(truth)
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    keys = []
    for i in order:
        sample = ds[i]
        members = truth[sample["__key__"]]
        got = {k.lstrip("."): v.getvalue() for k, v in sample.items() if not k.startswith("__")}
        assert got == members
        keys.append(sample["__key__"])
    assert sorted(keys) == sorted(truth)


def test_webdataset_reads_every_sample_and_masks_decode_with_l(version, truth):
    urls = [str(p) for p in sorted(version.glob("shard-*.tar"))]
    raw = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(raw) == len(truth)
    for sample in raw:
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        assert members == truth[sample["__key__"]]
    # The card's way: masks with "l", 16-bit material indices opened as they are, views "pil".
    grey = wds.imagehandler("l")

    def members(key: str, data: bytes):
        if key.endswith(".mask.png"):
            return grey(key, data)
        if key.endswith(".matid.png"):
            return Image.open(io.BytesIO(data))
        return None

    for sample in wds.WebDataset(urls, shardshuffle=False).decode(members, "pil"):
        tar = truth[sample["__key__"]]
        mask = sample["view0.mask.png"]
        assert mask.ndim == 2 and np.array_equal(mask * 255, pixels(tar["view0.mask.png"]))
        assert np.array_equal(pixels(sample["view1.matid.png"]), pixels(tar["view1.matid.png"]))
        assert pixels(tar["view1.matid.png"]).dtype == np.uint16
        assert sample["view0.jpg"].mode == "RGB"
        assert drop_nulls(sample["json"]) == json.loads(tar["json"])
    # What the card warns about: "pil" alone turns a mask into RGB.
    plain = next(iter(wds.WebDataset(urls, shardshuffle=False).decode("pil")))
    assert plain["view0.mask.png"].mode == "RGB"


# ----------------------------------------------------------------------------- leakage


def test_leakage_reads_the_index_lists_and_scans_when_asked(version):
    from train.eval.data import dataset_usage

    listed = dataset_usage(str(version))
    scanned = dataset_usage(str(version), scan=True)
    assert listed["materials"] == scanned["materials"] and listed["groups"] == scanned["groups"]
    assert listed["lights"] == scanned["lights"] and listed["meshes"] <= scanned["meshes"]


# ----------------------------------------------------------------------------- card logic


def test_split_files_per_catalog_split_or_one_train_split():
    def shard(name: str, *splits: str) -> card.ShardSummary:
        return card.ShardSummary(name, samples=2, splits=set(splits))

    pure = [shard("a.tar", "val"), shard("b.tar", "train"), shard("c.tar", "train")]
    assert card.split_files(pure) == {"train": ["b.tar", "c.tar"], "val": ["a.tar"]}
    mixed = [shard("a.tar", "val", "train"), shard("b.tar", "test")]
    assert card.split_files(mixed) == {"train": ["a.tar", "b.tar"]}
    empty = card.ShardSummary("e.tar")
    assert card.split_files([shard("a.tar", "test"), empty]) == {"test": ["a.tar"]}


def test_json_types_merge_into_a_union():
    a = card.json_type({"x": 1, "p": {"r": 0.5}, "l": [1, 2]})
    b = card.json_type({"x": 2.5, "p": {"m": "s"}, "l": [], "n": None})
    assert card.merge_types(a, b) == {
        "x": "float64",
        "p": {"r": "float64", "m": "string"},
        "l": ("list", "int64"),
        "n": "null",
    }
    clash = card.merge_types(card.json_type({"v": [1]}), card.json_type({"v": "s"}))
    assert card.conflicts(clash) == ["json.v"]
    # A conflicting field is left out of the features; the rest stays loadable.
    out = card._feature(card.merge_types(clash, card.json_type({"w": True})))
    assert out == {"struct": [{"name": "w", "dtype": "bool"}]}
    assert yaml.safe_load(yaml.safe_dump(out)) == out


def test_a_version_of_several_splits_loads_as_those_splits(tmp_path):
    import pool_fakes

    from render.build import build
    from render.spec import load_spec

    mats = [pool_fakes.material(f"tr-{i}", split="train") for i in range(2)]
    mats.append(pool_fakes.material("va-0", split="val", metallic=1.0))
    pool_fakes.write_catalogs(tmp_path / "cat", n_materials=0, extra_materials=mats)
    spec = load_spec(
        pool_fakes.write_spec(
            tmp_path / "cat",
            str(tmp_path / "data"),
            dataset={"shard_size": 1},  # one sample a shard: every shard holds one split
            catalogs={"split": ["train", "val"]},
        )
    )
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    assert verify_dataset(result.version_url).ok
    ds = datasets.load_dataset(result.version_url, cache_dir=str(tmp_path / "hf"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 2, "val": 1}
    assert ds["val"][0]["json"]["material"]["params"]["metallic"] == 1.0
    assert [r["json"]["material"]["params"]["metallic"] for r in ds["train"]] == [None, None]


def test_long_material_ids_are_read_by_webdataset_and_datasets_not_wids(tmp_path):
    import pool_fakes

    from render.build import build
    from render.spec import load_spec

    mats = [pool_fakes.material(f"long-{'x' * 90}-{i}") for i in range(2)]
    pool_fakes.write_catalogs(tmp_path / "cat", n_materials=0, extra_materials=mats)
    spec = load_spec(pool_fakes.write_spec(tmp_path / "cat", str(tmp_path / "data")))
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    report = verify_dataset(result.version_url)
    assert report.ok and any("wids cannot read them" in n for n in report.notes)
    assert "`wids` does not" in (tmp_path / result.version_url / schema.CARD_NAME).read_text()
    urls = sorted(str(p) for p in (tmp_path / result.version_url).glob("shard-*.tar"))
    keys = sorted(f"{m['id']}__g0000" for m in mats)
    assert sorted(s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)) == keys
    ds = datasets.load_dataset(result.version_url, cache_dir=str(tmp_path / "hf"))
    assert sorted(ds["train"]["__key__"]) == keys
