"""The whole loop as a user runs it, through the three CLIs, at toy size.

Blender renders a training set and a held-out set with the renderer's writer, ``phieat-render
verify`` checks them, the trainer streams the training shards for a few steps, and
``phieat-eval`` scores the result on the held-out shards. This is the test that the shard
contract holds between the two halves that never import each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from render.build import resolve_dataset_url

ROOT = Path(__file__).resolve().parents[1]
TOY = [
    "--set",
    "render.resolution=32",
    "--set",
    "render.samples=2",
    "--set",
    "render.denoise=false",
    "--set",
    "render.passes=['mask', 'matid']",
    "--set",
    "dataset.max_materials=4",
    "--set",
    "dataset.shard_size=2",
    "--set",
    "dataset.views=3",
    # Selection scenes (eval-tiny) at twice the object views' size: the mixed-size path.
    "--set",
    "scenes.resolution=64",
]


def _resolve(output: Path) -> Path:
    """The version folder a finished build points to (``latest.json``)."""
    return Path(resolve_dataset_url(str(output)))


def cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    """A toy training set (train split) and held-out set (test split), rendered once."""
    base = tmp_path_factory.mktemp("e2e")
    train_out, eval_out = base / "train-data", base / "eval-data"
    cli(
        "render",
        "build",
        "manifests/loop-train.toml",
        "--local",
        "--no-progress",
        "--output",
        str(train_out),
        *TOY,
    )
    cli(
        "render",
        "build",
        "manifests/eval-tiny.toml",
        "--local",
        "--no-progress",
        "--output",
        str(eval_out),
        *TOY,
        "--set",
        "dataset.max_materials=6",
        "--set",
        "scenes.count=2",
    )
    return _resolve(train_out), _resolve(eval_out)


@pytest.mark.blender
@pytest.mark.slow
def test_render_train_evaluate(datasets, tmp_path: Path):
    train_dir, eval_dir = datasets
    for folder in (train_dir, eval_dir):
        cli("render", "verify", str(folder))

    index = json.loads((train_dir / "index.json").read_text())
    assert index["complete"] and sum(s["samples"] for s in index["shards"]) == 4

    run_dir = tmp_path / "run"
    # As a user names them: the build's output folder (its latest.json names the version).
    cli(
        "train",
        "--config",
        "tiny-cpu",
        f"data.urls={train_dir.parent}",
        f"out_dir={run_dir}",
        "optim.steps=2",
        "optim.warmup_steps=1",
        "data.batch_size=4",
        "data.num_workers=0",
        "log_every=1",
        "progress=false",
        "tensorboard=false",
    )
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss/total" in r] == [1, 2]
    assert (run_dir / "export" / "backbone.pt").exists()

    report_dir = tmp_path / "eval"
    cli(
        "train.eval.cli",
        "run",
        "--model",
        f"physical={run_dir}",
        "--model",
        "pixel-stats=pixel-stats",
        "--eval-data",
        str(eval_dir.parent),
        "--train-index",
        str(train_dir.parent),
        "--out",
        str(report_dir),
    )
    metrics = json.loads((report_dir / "physical" / "metrics.json").read_text())
    # 6 materials x 3 views and 2 scenes x 3 views, told apart by the renderer's metadata
    # (the background, index 0 of every matid map, is ignored without being asked).
    assert metrics["counts"] == {
        "views": 24,
        "object_views": 18,
        "selection_views": 6,
        "scenes": 2,
        "materials": 6,
    }
    assert metrics["model"]["step"] == 2 and metrics["model"]["physical_augmentation"] is True
    r = metrics["retrieval"]
    assert r["n_queries"] + r["n_excluded"] == 18 and r["n_queries"] > 0
    assert round(r["recall@1"] * r["n_queries"], 6).is_integer()  # hits / queries
    assert 0 < r["chance_recall@1"] < 1
    # The two selection scenes are scored over the whole image (pixel stats work at any
    # size): selecting everything is a floor below the best each map allows.
    selection = json.loads((report_dir / "pixel-stats" / "metrics.json").read_text())["selection"]
    assert selection["n_queries"] >= 2
    assert selection["iou_select_all"] < selection["iou_oracle"]
    report = (report_dir / "report.md").read_text()
    assert "18 object views of 6 materials, 6 material-selection views of 2 scenes" in report
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["models"]["physical"]["R@1"] == r["recall@1"]


@pytest.mark.blender
@pytest.mark.slow
def test_eval_refuses_training_data(datasets, tmp_path: Path):
    """Evaluating on the training set itself must stop and name what leaks."""
    train_dir, _ = datasets
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.eval.cli",
            "run",
            "--model",
            "px=pixel-stats",
            "--eval-data",
            str(train_dir),
            "--train-index",
            str(train_dir / "index.json"),
            "--out",
            str(tmp_path / "eval"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "material" in (proc.stdout + proc.stderr)
