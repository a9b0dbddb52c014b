"""Folder scanners: texture-set layouts, mesh files with sizes, HDRIs grouped by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from image_fakes import tiny_exr, tiny_hdr
from PIL import Image

from assets import catalog as cat
from assets import cli, lights, meshes, texsets


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 80, 40)).save(path)


def test_ambientcg_groups_resolutions_and_reads_dx(tmp_path: Path):
    for res in ("1K", "2K"):
        d = tmp_path / f"Wood049_{res}-PNG"
        for m in ("Color", "NormalDX", "Roughness", "Displacement"):
            _png(d / f"Wood049_{res}-PNG_{m}.png")
    result = texsets.scan_texture_sets(tmp_path)
    assert [e["id"] for e in result.entries] == ["ambientcg-wood049-1k", "ambientcg-wood049-2k"]
    assert {e["group"] for e in result.entries} == {"ambientcg-wood049"}
    e = result.entries[0]
    assert e["category"] == "wood" and e["normal_convention"] == "dx"
    assert set(e["maps"]) == {"basecolor", "normal", "roughness", "height"}


def test_polyhaven_and_unknown_category(tmp_path: Path):
    for m in ("diff", "nor_gl", "rough"):
        _png(tmp_path / "rusty_metal_02" / f"rusty_metal_02_{m}_1k.png")
        _png(tmp_path / "blorb" / f"blorb_{m}_1k.png")
    result = texsets.scan_texture_sets(tmp_path, layout="polyhaven")
    assert [e["id"] for e in result.entries] == ["polyhaven-rusty-metal-02-1k"]
    assert result.entries[0]["category"] == "metal"
    assert any("blorb" in s and "--category" in s for s in result.skipped)
    again = texsets.scan_texture_sets(tmp_path, layout="polyhaven", default_category="plastic")
    assert len(again.entries) == 2


def test_matsynth_metadata(tmp_path: Path):
    d = tmp_path / "Ceramic_Tiles_01"
    for m in ("basecolor", "normal", "roughness", "metallic", "height"):
        _png(d / f"{m}.png")
    (d / "metadata.json").write_text(
        json.dumps({"category": "ceramic", "physical_size": 200, "license": "CC-BY-4.0"})
    )
    result = texsets.scan_texture_sets(tmp_path)
    (e,) = result.entries
    assert e["source"] == "matsynth" and e["category"] == "ceramic" and e["licence"] == "CC-BY-4.0"
    assert e["physical_size_m"] == pytest.approx(2.0)  # centimetres in the metadata


def test_detect_layout_error_names_folder(tmp_path: Path):
    _png(tmp_path / "holiday.png")
    with pytest.raises(ValueError, match="no texture set found"):
        texsets.detect_layout(tmp_path)


def test_mesh_folder_sizes_from_sidecars(tmp_path: Path):
    (tmp_path / "chairs").mkdir()
    (tmp_path / "chairs" / "Arm Chair.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "chairs" / "Arm Chair.json").write_text('{"size_m": 0.9, "licence": "CC-BY-4.0"}')
    (tmp_path / "rock.stl").write_bytes(b"solid x\nendsolid x\n")
    entries = meshes.scan_mesh_folder(tmp_path, default_size_m=0.25)
    by_id = {e["id"]: e for e in entries}
    assert by_id["file-chairs-arm-chair"]["size_m"] == 0.9
    assert by_id["file-chairs-arm-chair"]["licence"] == "CC-BY-4.0"
    assert by_id["file-rock"]["size_m"] == 0.25 and by_id["file-rock"]["kind"] == "file"


def test_hdri_folder_groups_resolutions(tmp_path: Path):
    for name in ("sky_park_2k.hdr", "sky_park_4k.hdr", "studio_small_1k.exr"):
        (tmp_path / name).write_bytes(tiny_hdr() if name.endswith("hdr") else tiny_exr())
    entries = lights.scan_hdri_folder(tmp_path)
    groups = {e["id"]: e["group"] for e in entries}
    assert groups["hdri-sky-park-2k"] == groups["hdri-sky-park-4k"] == "hdri-sky-park"
    cat.validate_catalog([dict(e, split="train") for e in entries], "lights")


def test_cli_scan_appends_and_refuses_duplicates(tmp_path: Path, capsys):
    src = tmp_path / "hdris"
    src.mkdir()
    for i in range(4):
        (src / f"place{i}_1k.hdr").write_bytes(tiny_hdr())
    out = tmp_path / "lights.jsonl"
    cat.write_catalog(out, cat.assign_splits(lights.builtin_lights(), "lights", min_test=3))
    assert cli.main(["scan", "lights", str(src), "--out", str(out), "--append"]) == 0
    assert len(cat.read_catalog(out)) == len(lights.builtin_lights()) + 4
    assert cli.main(["scan", "lights", str(src), "--out", str(out), "--append"]) == 2
    assert "already in" in capsys.readouterr().err


def test_cli_scan_split_puts_the_whole_folder_in_one_split(tmp_path: Path, capsys):
    src = tmp_path / "outside"
    for name in ("Rock001", "Rock002", "Brick003"):
        for m in ("Color", "NormalGL", "Roughness"):
            _png(src / f"{name}_1K-PNG" / f"{name}_1K-PNG_{m}.png")
    out = tmp_path / "materials.jsonl"
    # Without --split, a test fraction of 1 leaves nothing for train and is refused.
    args = ["scan", "materials", str(src), "--out", str(out), "--category", "stone"]
    assert cli.main([*args, "--test", "0.99", "--val", "0"]) == 2
    assert "no materials left for train" in capsys.readouterr().err
    assert cli.main([*args, "--split", "test"]) == 0
    entries = cat.read_catalog(out)
    assert len(entries) == 3 and {e["split"] for e in entries} == {"test"}

    # Appended to a catalog, the scanned entries get the split and the others keep theirs.
    base = tmp_path / "base.jsonl"
    old = [dict(e, id=f"old-{e['id']}", group=f"old-{e['group']}") for e in entries]
    cat.write_catalog(base, [dict(e, split="train") for e in old])
    assert cli.main([*args[:3], "--out", str(base), "--append", "--split", "val"]) == 0
    splits = {e["id"]: e["split"] for e in cat.read_catalog(base)}
    assert sorted(splits.values()) == ["train"] * 3 + ["val"] * 3
    assert all(s == "train" for i, s in splits.items() if i.startswith("old-"))
    assert "--split {train,val,test}" in " ".join(_help(["scan", "--help"]).split())


def _help(argv: list[str]) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli.main(argv)
    return buf.getvalue()
