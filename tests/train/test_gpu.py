"""The same trainer on CUDA: bf16 autocast, device-side augmentation, and the CPU path's
results shape. Skipped, with the reason printed, where no CUDA device is visible."""

from __future__ import annotations

import json
import math

import pytest
import torch

from train.config import load_config
from train.models import extract, load_backbone_for_eval
from train.train import main


@pytest.mark.gpu
def test_train_steps_on_cuda_with_bf16(shard_dir, tmp_path, micro):
    cfg = load_config(
        None, micro(shard_dir, tmp_path / "run", steps=4) + ["device=cuda", "precision=bf16"]
    )
    summary = main(cfg)
    assert summary["step"] == 4 and summary["export"]
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/total"]) for r in logged if "loss/total" in r)
    backbone, _ = load_backbone_for_eval(summary["export"])
    feats = extract(backbone.cuda(), torch.rand(2, 3, 32, 32, device="cuda"))
    assert feats["cls"].shape[0] == 2 and torch.isfinite(feats["cls"]).all()
