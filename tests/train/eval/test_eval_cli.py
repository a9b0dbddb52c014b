"""phieat-eval end to end on tiny shards: metrics, figures, report, leakage refusal."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from train.eval.cli import main
from train.models import build_backbone, export_backbone, model_kwargs

MESHES = ["m-a", "m-b", "m-c", "m-d"]
LIGHTS = ["l-a", "l-b", "l-c"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import make_material, write_dataset

    root = tmp_path_factory.mktemp("world")
    ev = [make_material(i, "ev") for i in range(16)]
    write_dataset(
        root / "eval", ev, MESHES, LIGHTS, views=4, size=32, selection={m["id"] for m in ev[12:]}
    )
    va = [make_material(i, "va") for i in range(100, 106)]
    write_dataset(
        root / "val",
        va,
        ["m-v", "m-w"],
        ["l-v", "l-w"],
        views=3,
        size=32,
        seed=1,
        selection={m["id"] for m in va[2:]},
    )
    tr = [make_material(i, "tr") for i in range(200, 204)]
    write_dataset(root / "train", tr, ["m-t"], ["l-t"], views=2, size=32, seed=2)
    kwargs = model_kwargs("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    torch.manual_seed(0)
    run_dir = root / "run-phys"
    export_backbone(
        build_backbone(dict(kwargs)),
        kwargs,
        str(run_dir / "export" / "backbone.pt"),
        {"step": 30, "physical_augmentation": True},
    )
    lines = [
        json.dumps({"step": s, "loss": {"total": 5 * math.exp(-s / 9) + 1, "koleo": -0.1}})
        for s in range(30)
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:10] + ["{broken"] + lines[10:]) + "\n")
    return root


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "phieat-eval run" in text and "phieat-eval report" in text and "--train-index" in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "pixel-stats" in capsys.readouterr().out


def test_run_writes_metrics_figures_and_report(world, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--model",
            f"phys={world / 'run-phys'}",
            "--model",
            "pixels=pixel-stats",
            "--eval-data",
            str(world / "eval"),
            "--val-data",
            str(world / "val"),
            "--train-index",
            str(world / "train" / "index.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| phys |" in printed and "| pixels |" in printed and "report:" in printed

    pix = json.loads((out / "pixels" / "metrics.json").read_text())
    assert pix["counts"] == {
        "views": 64,
        "object_views": 48,
        "selection_views": 16,
        "scenes": 4,
        "materials": 12,
    }
    assert pix["data"]["leakage_check"].startswith("passed")
    r = pix["retrieval"]
    assert r["n_queries"] + r["n_excluded"] == 48 and r["recall@1"] > 2 * r["chance_recall@1"]
    assert {"knn@10", "knn@20"} <= set(pix["knn"]) and pix["linear_probe"][
        "hyperparameters_from"
    ] == "val set"
    assert pix["selection"]["threshold_from"] == "val set" and pix["selection"]["iou"] > 0.8
    assert pix["invariance"]["ratio"] < 1
    phys = json.loads((out / "phys" / "metrics.json").read_text())
    assert phys["model"]["step"] == 30 and phys["model"]["physical_augmentation"] is True
    assert (out / "phys" / "train_metrics.jsonl").exists()

    report = (out / "report.md").read_text()
    assert "| phys |" in report and "passed" in report
    pngs = [line.split("(")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    names = {p.split("/")[-1] for p in pngs}
    assert {
        "loss_curves.png",
        "phys_retrieval.png",
        "pixels_selection.png",
        "phys_pca.png",
    } <= names
    for rel in pngs:
        with Image.open(out / rel) as img:
            assert img.width >= 300 and img.height >= 150

    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["pixels"]["R@1"] == pix["retrieval"]["recall@1"]
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").exists()


def test_run_refuses_leakage_and_names_it(
    world, tmp_path, caplog, dataset_writer, material_factory
):
    leaky = [material_factory(5, "ev"), material_factory(300, "tr")]
    dataset_writer(tmp_path / "leaky", leaky, ["m-t"], ["l-t"], views=2, size=32)
    code = main(
        [
            "run",
            "--model",
            "pixels=pixel-stats",
            "--eval-data",
            str(world / "eval"),
            "--train-index",
            str(tmp_path / "leaky"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "ev-005" in caplog.text and "ev-grp-005" in caplog.text
    assert not (tmp_path / "out" / "pixels").exists()


def test_run_without_val_uses_a_held_out_part(world, tmp_path):
    out = tmp_path / "noval"
    code = main(
        [
            "run",
            "--model",
            "rnd=random",
            "--eval-data",
            str(world / "eval"),
            "--train-index",
            "none",
            "--out",
            str(out),
            "--no-report",
            "--max-samples",
            "16",
        ]
    )
    assert code == 0 and not (out / "report.md").exists()
    m = json.loads((out / "rnd" / "metrics.json").read_text())
    assert m["data"]["leakage_check"].startswith("skipped")
    assert m["selection"]["threshold_from"].startswith("eval set")
    assert m["linear_probe"]["hyperparameters_from"].startswith("eval set")


def test_bad_arguments_are_named(world, tmp_path, capsys, caplog):
    with pytest.raises(SystemExit):
        main(
            [
                "run",
                "--model",
                "no-equals-sign",
                "--eval-data",
                "x",
                "--train-index",
                "none",
                "--out",
                str(tmp_path),
            ]
        )
    assert "NAME=SPEC" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty")]) == 1 and "metrics.json" in caplog.text
    code = main(
        [
            "run",
            "--model",
            "a=/nowhere/ckpt.pt",
            "--eval-data",
            str(world / "eval"),
            "--train-index",
            "none",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1 and "/nowhere/ckpt.pt" in caplog.text


def test_eval_run_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seed of queries, folds and random init (default: 0)" in text
    assert "(default: None)" not in text and "(default: 32)" in text
