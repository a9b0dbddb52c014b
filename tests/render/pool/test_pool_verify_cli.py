"""verify catches damage; preview draws one row per sample; the CLI teaches and runs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pool_fakes
import pytest
from PIL import Image

from render import cli, storage
from render.build import build
from render.preview import contact_sheet
from render.verify import verify_dataset

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def dataset(make_spec):
    spec = make_spec(dataset={"views": 3})
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False)
    assert result.exit_code == 0
    return result


def test_verify_catches_a_truncated_shard(dataset):
    tar = Path(dataset.version_url) / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1500])
    report = verify_dataset(dataset.output)
    assert not report.ok
    text = report.summary()
    assert "shard-000001.tar" in text and "truncated" in text


def test_verify_catches_a_tampered_checksum(dataset):
    side = Path(dataset.version_url) / "shard-000000.json"
    record = json.loads(side.read_text())
    record["sha256"] = "f" * 64
    side.write_text(json.dumps(record))
    report = verify_dataset(dataset.version_url)
    assert any("sidecar sha256" in p for p in report.problems)
    index_path = Path(dataset.index_url)
    index = json.loads(index_path.read_text())
    index["shards"][2]["sha256"] = "0" * 64
    index_path.write_text(json.dumps(index))
    report = verify_dataset(dataset.version_url)
    assert any(p.startswith("shard-000002.tar: sha256") for p in report.problems)


def test_verify_catches_bad_samples_and_missing_shards(dataset, tmp_path):
    from render.writer import ShardWriter

    v = Path(dataset.version_url)
    index = json.loads((v / "index.json").read_text())
    w = ShardWriter(tmp_path)
    w.add_sample("mat-000__g0000", [("view0.jpg", b"not a jpeg"), ("json", b"{}")])
    sha, nbytes = w.close()
    w.publish(str(v / "shard-000000.tar"))
    index["shards"][0].update(sha256=sha, bytes=nbytes)
    (v / "index.json").write_text(json.dumps(index))
    (v / "shard-000002.tar").unlink()
    problems = verify_dataset(str(v)).problems
    assert any("schema_version" in p for p in problems)
    assert any("shard-000002.tar: listed in the index but missing" in p for p in problems)
    assert not verify_dataset(str(tmp_path / "nothing")).ok


def test_contact_sheet_has_one_row_per_sample_and_v_columns(dataset, tmp_path):
    sheet = contact_sheet(dataset.output, shard=0, thumb=32)
    # 2 samples in a shard, 3 views each
    assert sheet.size == (200 + 3 * 36 + 4, 2 * 36 + 4 + 20)
    out = tmp_path / "sheet.png"
    assert (
        cli.main(["preview", dataset.output, "-o", str(out), "--thumb", "32", "--shard", "0"]) == 0
    )
    assert Image.open(io.BytesIO(out.read_bytes())).size == sheet.size


def test_cli_plan_json_is_deterministic_and_help_has_examples(make_spec, capsys):
    spec = make_spec()
    assert cli.main(["plan", spec.path, "--json"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["plan", spec.path, "--json"]) == 0
    assert (
        capsys.readouterr().out == first
        and json.loads(first)["shards"][0]["name"] == "shard-000000.tar"
    )
    assert cli.main(["plan", spec.path, "--estimate", "--diff"]) == 0
    out = capsys.readouterr().out
    assert "a build would render 3 of 3 shards" in out and "core-hours" in out
    for command in ("plan", "build", "verify", "preview"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "examples:" in capsys.readouterr().out
    assert cli.main(["plan", spec.path, "--set", "render.sampels=3"]) == 2
    assert "did you mean 'samples'" in capsys.readouterr().err


def test_cli_verify_exit_status(dataset, capsys):
    assert cli.main(["verify", dataset.output]) == 0
    assert "OK" in capsys.readouterr().out
    Path(dataset.version_url, "shard-000000.tar").write_bytes(b"")
    assert cli.main(["verify", dataset.output]) == 1


def test_cli_runs_as_module_without_assets_group_errors():
    out = subprocess.run(
        [sys.executable, "-m", "render", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "plan" in out and "verify" in out and "phieat-render build manifests/tiny.toml" in out


def test_build_memory_output_through_the_cli(make_spec, capsys, monkeypatch):
    monkeypatch.setattr("render.build.blender_session_factory", pool_fakes.fake_factory)
    spec = make_spec()
    code = cli.main(
        ["build", spec.path, "--local", "--no-progress", "--output", "memory://cli-test/ds"]
    )
    assert code == 0, capsys.readouterr()
    assert "3 rendered" in capsys.readouterr().out
    assert storage.exists("memory://cli-test/ds/latest.json")


def test_cli_plan_diff_shows_what_a_rerun_adds(make_spec, catalog_dir, capsys):
    spec = make_spec()
    assert (
        build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False).exit_code
        == 0
    )
    pool_fakes.write_catalogs(catalog_dir, n_materials=8)
    assert cli.main(["plan", spec.path, "--diff", "--blender-version", "5.0.1"]) == 0
    out = capsys.readouterr().out
    assert "a build would render 1 of 4 shards (1 in a new generation, 1 missing)" in out
    assert "shard-000003.tar  gen 1" in out and "mat-006__g0000" in out
