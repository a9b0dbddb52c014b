"""Catalog I/O, validation errors that name the entry, the group-wise split, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets import catalog as cat
from assets import cli, families, lights, meshes


def _materials(n: int = 8) -> list[dict]:
    return families.generate(n, ["wood", "marble"])


def test_write_read_roundtrip_sorted_and_atomic(tmp_path: Path):
    entries = list(reversed(_materials(4)))
    path = cat.write_catalog(tmp_path / "materials.jsonl", entries)
    lines = path.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == sorted(ids) and len(ids) == 8
    assert not list(tmp_path.glob(".*tmp*"))
    back = cat.read_catalog(path)
    assert [e["id"] for e in back] == ids and back[0]["_line"] == 1
    assert cat.catalog_hash(back) == cat.catalog_hash(entries)


def test_validate_names_duplicate_dotted_and_bad_category(tmp_path: Path):
    entries = _materials(2)
    dup = dict(entries[0])
    dotted = dict(entries[1], id="oak.017", group="g1")
    badcat = dict(entries[2], category="cheese")
    with pytest.raises(cat.CatalogError) as err:
        cat.validate_catalog([*entries, dup, dotted, badcat], "materials")
    text = str(err.value)
    assert f"entry {entries[0]['id']!r}: duplicate id" in text
    assert "'oak.017'" in text and "dot" in text
    assert "category 'cheese'" in text


def test_validate_missing_and_unreadable_maps(tmp_path: Path):
    good = tmp_path / "a_diff_1k.png"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(good)
    corrupt = tmp_path / "a_rough_1k.png"
    corrupt.write_bytes(b"\x89PNG not really")
    entry = {
        "id": "polyhaven-a-1k",
        "category": "wood",
        "source": "polyhaven",
        "licence": "CC0-1.0",
        "group": "polyhaven-a",
        "split": "train",
        "maps": {"basecolor": good.name, "roughness": corrupt.name, "normal": "missing.png"},
    }
    with pytest.raises(cat.CatalogError) as err:
        cat.validate_catalog([entry], "materials", base_dir=tmp_path)
    text = str(err.value)
    assert "map 'roughness'" in text and "not a readable image" in text
    assert "map 'normal'" in text and "missing.png does not exist" in text
    cat.validate_catalog(
        [dict(entry, maps={"basecolor": good.name})], "materials", base_dir=tmp_path
    )


def test_validate_meshes_and_lights():
    cat.validate_catalog(cat.assign_splits(meshes.builtin_meshes(), "meshes", min_test=8), "meshes")
    cat.validate_catalog(cat.assign_splits(lights.builtin_lights(), "lights", min_test=3), "lights")
    bad_light = dict(
        lights.bundled_hdris()[0], id="hdri-moon", path="bpy:studiolights/world/moon.exr"
    )
    bad_mesh = dict(meshes.builtin_meshes()[0], size_m=-1)
    with pytest.raises(cat.CatalogError, match="moon.exr"):
        cat.validate_catalog([bad_light], "lights")
    with pytest.raises(cat.CatalogError, match="size_m must be a positive"):
        cat.validate_catalog([bad_mesh], "meshes")


def test_builtin_counts():
    assert len(meshes.builtin_meshes()) >= 50
    assert len({e["id"] for e in meshes.builtin_meshes()}) == len(meshes.builtin_meshes())
    kinds = {e["kind"] for e in lights.builtin_lights()}
    assert kinds == {"hdri", "sky", "studio"}
    assert sum(e["kind"] == "hdri" for e in lights.builtin_lights()) == 8
    sky_types = {e["params"]["sky_type"] for e in lights.builtin_lights() if e["kind"] == "sky"}
    assert sky_types == set(lights.SKY_TYPES)


def test_split_is_groupwise_deterministic_and_stable():
    entries = families.generate(40, ["wood", "marble", "fabric"])
    a = cat.assign_splits(entries, "materials", seed=3)
    b = cat.assign_splits(list(reversed(entries)), "materials", seed=3)
    assert {e["id"]: e["split"] for e in a} == {e["id"]: e["split"] for e in b}
    by_group: dict[str, set] = {}
    for e in a:
        by_group.setdefault(e["group"], set()).add(e["split"])
    assert all(len(s) == 1 for s in by_group.values())
    assert {e["split"] for e in a} == {"train", "val", "test"}
    # Growing the catalog never moves an existing group.
    grown = cat.assign_splits(
        families.generate(60, ["wood", "marble", "fabric"]), "materials", seed=3
    )
    old = {e["id"]: e["split"] for e in a}
    assert all(old[e["id"]] == e["split"] for e in grown if e["id"] in old)


def test_split_holdout_family_and_minimum_test_sizes():
    entries = families.generate(16, ["wood", "marble", "fabric"])
    out = cat.assign_splits(entries, "materials", holdout_families=["marble"])
    assert all(e["split"] == "test" for e in out if e["family"] == "marble")
    assert any(e["split"] == "train" for e in out)
    with pytest.raises(cat.CatalogError, match="no such family"):
        cat.assign_splits(entries, "materials", holdout_families=["velvet"])
    two = lights.bundled_hdris()[:2]
    with pytest.raises(cat.CatalogError, match="test split holds .* needs at least 3"):
        cat.assign_splits(two, "lights", min_test=3)
    split = cat.assign_splits(lights.builtin_lights(), "lights", min_test=3, stratify="kind")
    test_kinds = {e["kind"] for e in split if e["split"] == "test"}
    assert test_kinds == {"hdri", "sky", "studio"}


def test_cli_generate_validate_split_summary(tmp_path: Path, capsys):
    out = tmp_path / "cat"
    assert cli.main(["generate", "--out-dir", str(out), "--per-family", "8"]) == 0
    paths = [str(out / f"{k}.jsonl") for k in cat.KINDS]
    assert cli.main(["validate", *paths]) == 0
    assert "diversity ok" in capsys.readouterr().out
    assert cli.main(["split", str(out / "materials.jsonl"), "--holdout-family", "wood"]) == 0
    mats = cat.read_catalog(out / "materials.jsonl")
    assert all(e["split"] == "test" for e in mats if e["family"] == "wood")
    assert cli.main(["summary", *paths]) == 0
    text = capsys.readouterr().out
    assert "materials" in text and "hdri 8" in text
    # A broken catalog: the error names the entry and the command fails.
    rows = (out / "meshes.jsonl").read_text().splitlines()
    (out / "meshes.jsonl").write_text("\n".join(rows + [rows[0]]) + "\n")
    assert cli.main(["validate", str(out / "meshes.jsonl")]) == 2
    assert "duplicate id" in capsys.readouterr().err


def test_cli_registers_on_a_parent_parser():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["assets", "validate", "--no-files", "x.jsonl"])
    assert args.func is cli.cmd_validate and args.catalogs == ["x.jsonl"]


def test_check_image_catches_truncated_files(tmp_path: Path):
    from PIL import Image

    for suffix in ("png", "jpg"):
        good = tmp_path / f"good.{suffix}"
        Image.effect_noise((64, 64), 40).convert("RGB").save(good)
        assert cat.check_image(good) is None
        cut = tmp_path / f"cut.{suffix}"
        data = good.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        assert "not a readable image" in cat.check_image(cut)
    exr = tmp_path / "env.exr"
    exr.write_bytes(b"not an exr")
    assert "not an OpenEXR file" in cat.check_image(exr)
