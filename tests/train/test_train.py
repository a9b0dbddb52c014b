"""Trainer loop: exact resume, preemption, non-finite abort, export for evaluation."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

from train.checkpoint import list_checkpoints, load_checkpoint
from train.config import load_config
from train.models import extract, load_backbone_for_eval
from train.train import main


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(shard_dir, tmp_path, micro):
    extra = ["data.num_workers=2", "loss.gram_weight=0.5", "loss.gram_start_step=2"]
    full = load_config(None, micro(shard_dir, tmp_path / "full", steps=6) + extra)
    main(full)
    first = load_config(
        None, micro(shard_dir, tmp_path / "split", steps=6) + extra + ["stop_at_step=3"]
    )
    summary = main(first)
    assert summary["step"] == 3 and summary["export"] is None
    assert [s for s, _ in list_checkpoints(str(tmp_path / "split" / "checkpoints"))] == [3]
    second = load_config(None, micro(shard_dir, tmp_path / "split", steps=6) + extra)
    summary = main(second)
    assert summary["step"] == 6 and summary["export"]
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b, strict=True):
        assert ra["batch_digest"] == rb["batch_digest"], ra["step"]
        for key in ("loss/dino", "loss/ibot", "loss/koleo", "loss/contrast", "loss/total"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    assert "loss/gram" in a[-1] and "loss/gram" not in a[0]  # Gram teacher from step 2 on
    ckpt = load_checkpoint(str(tmp_path / "split" / "checkpoints" / "ckpt-00000006.pt"))
    assert ckpt["config"]["optim"]["steps"] == 6 and ckpt["buffers"]["gram_snapshot_step"] == 2
    assert ckpt["loader"][0]["batches"] == 6
    assert (tmp_path / "full" / "config.toml").exists()


def test_export_loads_for_eval(shard_dir, tmp_path, micro):
    cfg = load_config(
        None, micro(shard_dir, tmp_path, steps=2) + ["data.physical_augmentation=false"]
    )
    summary = main(cfg)
    backbone, info = load_backbone_for_eval(summary["export"])
    assert info["physical_augmentation"] is False and info["step"] == 2 and info["patch_size"] == 8
    feats = extract(backbone, torch.rand(2, 3, 32, 32))
    assert feats["cls"].shape == (2, 32) and feats["patches"].shape == (2, 4, 4, 32)
    from_ckpt, _ = load_backbone_for_eval(tmp_path / "checkpoints" / "ckpt-00000002.pt")
    assert torch.allclose(
        extract(from_ckpt, torch.ones(1, 3, 32, 32))["cls"],
        extract(backbone, torch.ones(1, 3, 32, 32))["cls"],
    )


def test_sigterm_checkpoints_and_stops(shard_dir, tmp_path, micro):
    cfg = load_config(None, micro(shard_dir, tmp_path, steps=500))

    def kill_after_first_step():
        path = tmp_path / "metrics.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and not (path.exists() and path.read_text().strip()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=kill_after_first_step, daemon=True)
    thread.start()
    summary = main(cfg)
    thread.join()
    assert 1 <= summary["step"] < 500 and summary["export"] is None
    steps = [s for s, _ in list_checkpoints(str(tmp_path / "checkpoints"))]
    assert steps == [summary["step"]]


def test_non_finite_loss_aborts_before_step(shard_dir, tmp_path, micro):
    cfg = load_config(None, micro(shard_dir, tmp_path, steps=3) + ["loss.student_temp=0.0"])
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        main(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_time_budget_stops_checkpoints_and_exports(shard_dir, tmp_path, micro):
    cfg = load_config(None, micro(shard_dir, tmp_path, steps=500) + ["max_minutes=0.00001"])
    summary = main(cfg)
    assert summary["step"] == 1 and summary["export"]
    payload = torch.load(summary["export"], weights_only=True)
    assert payload["time_limited"] is True and payload["step"] == 1
    assert [s for s, _ in list_checkpoints(str(tmp_path / "checkpoints"))] == [1]
