"""Bad input and damaged data on the render side: each case a clear error or a failed sample
with its reason; nothing wrong is published and nothing is read from outside its folder.

Cases: non-finite or out-of-bounds spec values, renders that come out black or with a
texture that did not load, asset files that do not decode, damaged sidecars and index
entries, catalog paths leaving their folder, file modes, damaged samples in ``preview``, a
spec copied away from its catalogs, and the cost estimate against measured numbers.
Tests that render need the bpy wheel (marker ``blender``) and stay at 32-128 px.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import resource
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fault_fakes import FakeSession
from PIL import Image

from assets import cli as assets_cli
from render import cli
from render.build import build
from render.estimate import estimate
from render.plan import PlanError, load_catalogs, make_plan
from render.preview import contact_sheet, write_preview
from render.spec import SpecError, load_spec
from render.verify import verify_dataset

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures


def _material(mid: str, **extra) -> dict:
    entry = {
        "id": mid,
        "category": "plastic",
        "source": "procedural",
        "family": "uniform",
        "params": {"base_color": [0.6, 0.2, 0.1], "roughness": 0.4},
        "licence": "CC0-1.0",
        "group": mid,
        "split": "train",
    }
    entry.update(extra)
    return entry


MESH = {
    "id": "mesh-sphere",
    "kind": "primitive",
    "params": {"shape": "uv_sphere"},
    "size_m": 0.3,
    "group": "mesh-sphere",
    "split": "train",
    "licence": "CC0-1.0",
}


def _light(lid: str, kind: str = "hdri", **extra) -> dict:
    entry = {"id": lid, "kind": kind, "params": {}, "group": lid, "split": "train"}
    entry.update(licence="CC0-1.0", **extra)
    return entry


CITY = _light("hdri-city", path="bpy:studiolights/world/city.exr")


def _jsonl(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _spec(folder: Path, materials=None, lights=None, **tables) -> Path:
    """A spec beside its three catalogs in ``folder``; ``tables`` override spec values with
    TOML text (``lighting={"strength": "[inf, inf]"}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    _jsonl(folder / "materials.jsonl", materials or [_material(f"mat-{i}") for i in range(6)])
    _jsonl(folder / "meshes.jsonl", [MESH])
    _jsonl(folder / "lights.jsonl", lights or [CITY])
    values = {
        "dataset": {"name": '"faults"', "output": json.dumps(str(folder / "out")), "views": "2"},
        "render": {"resolution": "32", "samples": "2", "denoise": "false"},
        "build": {"max_failure_fraction": "1.0", "max_retries": "0"},
    }
    values["dataset"]["shard_size"] = "2"
    for name, table in tables.items():
        values.setdefault(name, {}).update(table)
    path = folder / "spec.toml"
    path.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in table.items())
            for name, table in values.items()
        )
    )
    return path


def _fake_build(spec_path: Path):
    result = build(load_spec(spec_path), local=True, session_factory=FakeSession, progress=False)
    assert result.exit_code == 0
    return result


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err + captured.out


# ----------------------------------------------------------------------------- spec values


def test_infinite_light_strength_is_refused_naming_the_key(tmp_path):
    spec = _spec(tmp_path, lighting={"strength": "[inf, inf]"})
    with pytest.raises(SpecError, match=r"\[lighting\]\.strength must hold finite numbers"):
        load_spec(spec)


def test_inf_in_a_range_is_a_one_line_error_not_an_overflow_traceback(tmp_path, capsys):
    spec = _spec(tmp_path, camera={"azimuth": "[0.0, inf]"})
    code, text = _cli(["plan", str(spec)], capsys)
    assert code == 2
    assert "error:" in text and "[camera].azimuth" in text and "finite" in text
    code, text = _cli(["build", str(spec), "--local", "--material-timeout-s", "inf"], capsys)
    assert code == 2 and "finite" in text


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("render", "background_color", "[nan, 0.5, 0.5]", "finite"),
        ("render", "background_color", "[2.0, 0.5, 0.5]", "within 0..1"),
        ("render", "background_color", "[-0.1, 0.5, 0.5]", "within 0..1"),
        ("camera", "elevation", "[nan, 10.0]", "finite"),
        ("camera", "elevation", "[10.0, 120.0]", "-90..90"),
        ("build", "material_timeout_s", "inf", "finite"),
        ("build", "max_worker_rss_mb", "-1.0", ">= 0"),
        ("scenes", "same_colour_pairs", "nan", "finite"),
    ],
)
def test_non_finite_or_unphysical_values_name_their_key(tmp_path, section, key, value, words):
    spec = _spec(tmp_path, **{section: {key: value}})
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    message = str(err.value)
    assert message.startswith(f"{spec}: [{section}].{key} ")  # the file, then the key
    assert words in message.removeprefix(str(spec)) and "\n" not in message


# ----------------------------------------------------------------------------- renders


def test_image_check_refuses_black_flat_and_nan_renders():
    pytest.importorskip("bpy", reason="the image check lives in the Blender session module")
    from render.blender.session import image_problem

    rng = np.random.default_rng(0)
    good = rng.uniform(0.0, 0.8, (16, 16, 3)).astype(np.float32)
    assert image_problem(good) is None
    assert "black" in image_problem(np.zeros((16, 16, 3), np.float32))
    assert "flat colour" in image_problem(np.full((16, 16, 3), 0.4, np.float32))
    assert "flat colour" in image_problem(np.full((16, 16, 3), 7.0, np.float32))  # blown out
    nan = good.copy()
    nan[3, 4, 1] = np.nan
    assert "NaN" in image_problem(nan)
    inf = good.copy()
    inf[0, 0, 0] = np.inf
    assert "NaN or infinite" in image_problem(inf)


def _failures(result) -> list[dict]:
    path = Path(result.version_url) / "failures.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _published_keys(result) -> list[str]:
    keys = []
    for tar in sorted(Path(result.version_url).glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            keys += [m.name for m in t.getmembers() if m.name.endswith(".json")]
    return keys


@pytest.mark.blender
def test_black_render_is_a_failed_sample_with_its_reason_never_published(tmp_path):
    pytest.importorskip("bpy")
    black = _light("light-black", "color", params={"color": [0.0, 0.0, 0.0]})
    mats = [_material("mat-0"), _material("mat-1")]
    result = build(load_spec(_spec(tmp_path, mats, [black])), local=True, progress=False)
    failures = _failures(result)
    assert {f["material_id"] for f in failures} == {"mat-0", "mat-1"}
    assert all("all black" in f["reason"] for f in failures)
    assert _published_keys(result) == []
    assert verify_dataset(result.version_url).ok


@pytest.mark.blender
def test_hdri_that_does_not_decode_fails_the_sample_instead_of_rendering_magenta(tmp_path):
    pytest.importorskip("bpy")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "broken.hdr").write_text("this is a text file, not an image\n")
    broken = _light("hdri-broken", path="broken.hdr")
    mats = [_material("mat-0"), _material("mat-1")]
    result = build(load_spec(_spec(tmp_path, mats, [broken])), local=True, progress=False)
    failures = _failures(result)
    assert {f["material_id"] for f in failures} == {"mat-0", "mat-1"}
    assert all("broken.hdr" in f["reason"] and "readable" in f["reason"] for f in failures)
    assert _published_keys(result) == []


# ----------------------------------------------------------------------------- assets


def test_assets_validate_decodes_hdris_and_maps(tmp_path, capsys):
    text_hdr = tmp_path / "sky.hdr"
    text_hdr.write_text("#?RADIANCE\nthis header never ends and there are no pixels\n")
    cut_exr = tmp_path / "cut.exr"
    fakes = importlib.util.spec_from_file_location(
        "image_fakes", ROOT / "tests" / "assets" / "image_fakes.py"
    )
    image_fakes = importlib.util.module_from_spec(fakes)
    fakes.loader.exec_module(image_fakes)
    tiny_exr, tiny_hdr = image_fakes.tiny_exr, image_fakes.tiny_hdr
    cut_exr.write_bytes(tiny_exr(4, 4)[:-6])
    cut_hdr = tmp_path / "cut.hdr"
    cut_hdr.write_bytes(tiny_hdr(4, 4)[:-5])
    good = tmp_path / "good.hdr"
    good.write_bytes(tiny_hdr(4, 4))
    lights = [
        _light(f"hdri-{p.stem}-{p.suffix[1:]}", path=p.name)
        for p in (text_hdr, cut_exr, cut_hdr, good)
    ]
    lights += [dict(_light(f"hdri-test-{i}", path=good.name), split="test") for i in range(8)]
    catalog = tmp_path / "lights.jsonl"
    _jsonl(catalog, lights)
    code = assets_cli.main(["validate", str(catalog), "--kind", "lights"])
    err = capsys.readouterr().err
    assert code == 2
    for bad in ("sky.hdr", "cut.exr", "cut.hdr"):
        assert bad in err
    assert "good.hdr" not in err


# ----------------------------------------------------------------------------- verify


def test_verify_reports_every_invalid_sidecar(tmp_path):
    result = _fake_build(_spec(tmp_path))
    version = Path(result.version_url)
    for name in ("shard-000000.json", "shard-000002.json"):
        (version / name).write_text("{not json")
    report = verify_dataset(result.version_url)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "shard-000000.json" in text and "shard-000002.json" in text
    assert report.shards == 3 and report.samples == 6  # it went on reading every shard


def test_shard_name_leaving_the_dataset_folder_is_refused(tmp_path, capsys):
    result = _fake_build(_spec(tmp_path / "ds"))
    version = Path(result.version_url)
    outside = version.parent / "x.tar"
    shutil.copy(version / "shard-000001.tar", outside)
    index = json.loads((version / "index.json").read_text())
    index["shards"][1]["name"] = "../x.tar"
    (version / "index.json").write_text(json.dumps(index))
    report = verify_dataset(result.version_url)
    assert any("'../x.tar'" in p and "refused" in p for p in report.problems)
    code, text = _cli(["preview", result.version_url, "-o", str(tmp_path / "p.png")], capsys)
    assert code == 2 and "refused" in text
    assert not (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------- confinement


def test_texture_path_leaving_the_catalog_folder_is_refused(tmp_path, capsys):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(secret)
    escaping = _material("tex-escape", source="polyhaven", maps={"basecolor": "../secret.png"})
    del escaping["family"], escaping["params"]
    spec = _spec(tmp_path / "assets", [_material("mat-0"), escaping])
    with pytest.raises(PlanError, match="leaves the catalog's folder"):
        load_catalogs(load_spec(spec))
    code = assets_cli.main(
        ["validate", str(tmp_path / "assets" / "materials.jsonl"), "--no-diversity"]
    )
    assert code == 2 and "leaves the catalog's folder" in capsys.readouterr().err


def test_published_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        result = _fake_build(_spec(tmp_path))
    finally:
        os.umask(previous)
    version = Path(result.version_url)
    for name in ("shard-000000.tar", "shard-000000.json", "index.json"):
        assert (version / name).stat().st_mode & 0o777 == 0o644, name


# ----------------------------------------------------------------------------- preview


def _rewrite_member(tar_path: Path, suffix: str, change) -> None:
    with tarfile.open(tar_path) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as dst:
        for name, data in members:
            if name.endswith(suffix):
                name, data = change(name, data)
            if name is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    tar_path.write_bytes(buffer.getvalue())


def test_preview_of_a_damaged_sample_is_a_clear_error(tmp_path, capsys):
    result = _fake_build(_spec(tmp_path))
    version = Path(result.version_url)
    _rewrite_member(version / "shard-000000.tar", ".json", lambda n, d: (n, b"{not json"))
    code, text = _cli(["preview", result.version_url, "-o", str(tmp_path / "a.png")], capsys)
    assert code == 2 and "shard-000000.tar" in text and "not valid JSON" in text
    _rewrite_member(version / "shard-000000.tar", "view1.jpg", lambda n, d: (None, d))
    code, text = _cli(["preview", result.version_url, "-o", str(tmp_path / "b.png")], capsys)
    assert code == 2 and "damaged" in text and "verify" in text


def test_preview_fills_its_rows_from_across_shards(tmp_path):
    result = _fake_build(_spec(tmp_path))  # 6 materials, 2 per shard
    sheet = contact_sheet(result.output, rows=12, thumb=16)
    assert sheet.size[1] == 6 * (16 + 4) + 4 + 20  # every material, not shard 0's two
    sheet = contact_sheet(result.output, rows=3, thumb=16)
    assert sheet.size[1] == 3 * (16 + 4) + 4 + 20


def test_preview_goes_under_out_by_default(tmp_path, monkeypatch):
    result = _fake_build(_spec(tmp_path / "ds"))
    monkeypatch.chdir(tmp_path)
    written = write_preview(result.output)
    assert written == "out/faults-preview.png"
    assert (tmp_path / "out" / "faults-preview.png").is_file()


# ----------------------------------------------------------------------------- first steps


def test_copied_spec_says_where_it_looked_and_how_to_point_at_the_catalogs(
    tmp_path, monkeypatch, capsys
):
    copy = tmp_path / "mine" / "tiny.toml"
    copy.parent.mkdir()
    shutil.copy(ROOT / "manifests" / "tiny.toml", copy)
    monkeypatch.chdir(ROOT)
    code, text = _cli(["plan", str(copy)], capsys)
    assert code == 2
    assert f"looked at {copy.parent / 'materials.jsonl'}" in text
    assert "manifests/materials.jsonl" in text and "[catalogs].materials =" in text
    assert "create" not in text


def test_demo_spec_has_its_own_output_folder_and_the_docs_verify_it():
    spec = load_spec(ROOT / "manifests" / "demo.toml")
    output = Path(spec.dataset.output)
    # scripts/demo.py (make demo) writes under out/demo: the spec must not share it.
    assert output != Path("out/demo") and Path("out/demo") not in output.parents
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert f"phieat-render verify {spec.dataset.output}\n" in docs


# ----------------------------------------------------------------------------- cost estimate

# core-s per image (cores x wall-clock / images) recorded on 2-core machines: the pool
# benchmark of docs/cluster.md (1 actor x 2 threads, 2 actors x 1 thread, 256 px) and the
# demo's builds on an idle machine (README: 4-6 images/s of 64 px / 16 samples + denoiser).
RECORDED = [
    (128, 16, False, 0.90, 0.95),
    (128, 16, False, 0.92, 1.13),
    (256, 32, False, 5.65, 6.17),
    (64, 16, True, 0.33, 0.50),
]


@pytest.mark.parametrize("res, samples, denoise, low, high", RECORDED)
def test_cost_model_matches_the_recorded_measurements(res, samples, denoise, low, high):
    from render.estimate import model_core_s_per_image

    model = model_core_s_per_image(res, samples, denoise)
    assert 0.85 * low <= model <= 1.15 * high


def test_estimate_prints_wall_clock_for_the_cores_and_small_sizes_in_mb(tmp_path):
    from render.estimate import format_estimate

    spec = load_spec(_spec(tmp_path))
    est = estimate(make_plan(spec, load_catalogs(spec)), cores=4)
    assert est["cores"] == 4
    assert est["wall_s"] == pytest.approx(est["images"] * est["core_s_per_image"] / 4, abs=0.1)
    text = format_estimate(est, spec)
    assert "on 4 cores" in text and "0.000 GB" not in text and " kB " in text


@pytest.mark.blender
@pytest.mark.slow
def test_estimate_against_a_small_real_build(tmp_path, monkeypatch):
    """The model's core-seconds per image within 30 % of a real build's user CPU time.

    What is compared: the demo's training views (``manifests/loop-train.toml``: 64 px, 16
    samples, denoiser, 1 Cycles thread), 3 materials x 4 views in one shard, built locally in
    this process; measured is the process's *user* CPU time from ``getrusage`` across the
    build, divided by the images rendered. Blender starts, and renders a first shard, before
    the measurement: a worker pays that once for hundreds of views. CPU time rather than
    wall-clock, so other processes on the machine do not count; user time only, because the
    system time of Blender's idle threads, which yield the CPU in a loop while the one Cycles
    thread renders, swings with how many cores are idle (0.04-0.3 s per view). On the 2-core
    machine of the fit this came out at 0.33-0.54 core-s per image against the model's 0.42.
    """
    pytest.importorskip("bpy")
    from render.blender.session import BlenderSession

    # A first build on a machine: no generated mesh comes from the disk cache (a warm one took
    # 10-25 % off the measurement here, and how warm it is depends on what ran before).
    monkeypatch.setenv("PHIEAT_MESH_CACHE_DIR", "off")
    session = BlenderSession(threads=1)

    def factory(threads: int = 1, device: str = "CPU", quiet: bool = True):
        return session

    def spec_of(name: str, *overrides: str):
        return load_spec(
            ROOT / "manifests" / "loop-train.toml",
            [f"dataset.output={json.dumps(str(tmp_path / name))}", *overrides],
        )

    warm = spec_of("warm", "dataset.max_materials=1", "dataset.views=2", "render.resolution=32")
    assert build(warm, local=True, session_factory=factory, progress=False).exit_code == 0
    spec = spec_of("out", "dataset.max_materials=3", "dataset.shard_size=3")
    assert (spec.render.resolution, spec.render.samples, spec.render.denoise) == (64, 16, True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    result = build(spec, local=True, session_factory=factory, progress=False)
    user_s = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    assert result.exit_code == 0 and result.images_rendered == 12
    measured = user_s / result.images_rendered
    model = estimate(make_plan(spec, load_catalogs(spec)))["core_s_per_image"]
    assert 0.7 * measured <= model <= 1.3 * measured, (model, measured)
