"""Collapse diagnostics: the stats on known distributions, and the trainer's warning."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from train.config import load_config
from train.diagnostics import collapse_warning, effective_rank, target_stats
from train.train import main


def test_target_stats_on_uniform_one_hot_and_shared_targets():
    k, b = 16, 8
    uniform = target_stats(torch.full((2, b, k), 1.0 / k), image_loss=math.log(k))
    assert uniform["teacher_entropy"] == pytest.approx(1.0)
    assert uniform["teacher_mi"] == pytest.approx(0.0, abs=1e-6)
    assert uniform["student_teacher_kl"] == pytest.approx(0.0, abs=1e-6)
    # Each image on its own prototype: zero per-sample entropy, batch entropy log(b).
    spread = torch.eye(k)[:b].expand(2, b, k)
    stats = target_stats(spread, image_loss=1.5)
    assert stats["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["teacher_batch_entropy"] == pytest.approx(math.log(b) / math.log(k))
    assert stats["teacher_mi"] == pytest.approx(math.log(b))
    assert stats["student_teacher_kl"] == pytest.approx(1.5)
    # Every image on prototype 0: the other collapse.
    same = target_stats(torch.eye(k)[[0] * b].expand(2, b, k), image_loss=0.0)
    assert same["teacher_batch_entropy"] == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_counts_directions():
    torch.manual_seed(0)
    assert effective_rank(torch.randn(1, 8).expand(64, 8)) == pytest.approx(0.0, abs=1e-3)
    basis = torch.eye(8)[:4]
    four = basis.repeat(16, 1)  # 4 orthogonal directions, equally often
    assert effective_rank(four) == pytest.approx(3.0, rel=0.05)  # centring removes one
    assert effective_rank(torch.randn(512, 8)) > 7.0


def test_collapse_warning_flags_uniform_and_concentrated_only_after_warmup():
    uniform = {"teacher_entropy": 0.97, "teacher_batch_entropy": 1.0, "teacher_mi": 0.02}
    healthy = {"teacher_entropy": 0.4, "teacher_batch_entropy": 0.9, "teacher_mi": 2.5}
    single = {"teacher_entropy": 0.01, "teacher_batch_entropy": 0.02, "teacher_mi": 0.01}
    assert "near uniform" in collapse_warning(uniform, step=100, after_step=50)
    assert collapse_warning(uniform, step=50, after_step=50) is None
    assert collapse_warning(healthy, step=100, after_step=50) is None
    assert "few prototypes" in collapse_warning(single, step=100, after_step=50)


def _run(shard_dir, tmp_path, micro, caplog, temp: float) -> list[str]:
    cfg = load_config(
        None,
        micro(shard_dir, tmp_path, steps=6)
        + [f"loss.teacher_temp={temp}", f"loss.warmup_teacher_temp={temp}", "export=false"],
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phieat.train"):
        main(cfg)
    return [r.getMessage() for r in caplog.records if "DINO targets" in r.getMessage()]


def test_trainer_warns_on_a_collapsing_run_only(shard_dir, tmp_path, micro, caplog):
    """A teacher temperature of 100 makes every target uniform: the run is flagged, its metrics
    carry the stats; at 0.04 the targets are sharp and nothing is flagged."""
    flagged = _run(shard_dir, tmp_path / "hot", micro, caplog, temp=100.0)
    assert len(flagged) == 1 and "near uniform" in flagged[0]
    assert _run(shard_dir, tmp_path / "cold", micro, caplog, temp=0.04) == []
    import json

    last = json.loads((tmp_path / "cold" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("teacher_entropy", "teacher_batch_entropy", "teacher_mi", "student_teacher_kl"):
        assert f"stats/{key}" in last
    assert last["stats/teacher_entropy"] < 0.9 and last["stats/cls_rank"] > 1.0
