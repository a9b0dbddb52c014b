"""2-process CPU gloo runs under torchrun: DDP and FSDP2 train; contrastive positives cross ranks.

Asserts known values: the contrastive loss and gradient of crops split over the ranks against
the single-process formula, what each rank returns against what rank 0 logged, the total
against its weighted terms, DDP against FSDP2 on the first step. One process against two ranks,
loss by loss and step by step, is ``test_invariance.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import load_checkpoint
from train.config import load_config
from train.models import extract, load_backbone_for_eval

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.slow
def test_torchrun_ddp_and_fsdp2(shard_dir, tmp_path, micro):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(HERE / "dist_worker.py"), str(shard_dir), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in range(2)]
    # Contrast over 8 crops, labels [0 1 2 0 | 1 2 3 3] split 4 + 4: each rank's anchors have
    # 4 positives, 2 of them on the other rank; value and gradient are the single-process ones.
    for result in results:
        contrast = result["contrast"]
        assert contrast["stats"] == {
            "anchors_with_positive": 4.0,
            "positives": 4.0,
            "positives_other_ranks": 2.0,
        }
        assert contrast["mean"] == pytest.approx(contrast["reference"], rel=1e-5)
        assert contrast["grad_scale"] > 1e-3
        assert contrast["grad_err"] <= 1e-5 * contrast["grad_scale"]
    weights = load_config(None, micro(shard_dir, tmp_path)).loss
    for parallel in ("ddp", "fsdp"):
        logged = [
            json.loads(line)
            for line in (tmp_path / parallel / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in logged][:3] == [1, 2, 3]
        for rank, result in enumerate(results):
            assert result[parallel]["step"] == 3
            losses = result[parallel]["losses"]
            # what every rank returns is the all-reduced value rank 0 logged at step 3
            for name, value in losses.items():
                assert value == logged[2][name], (parallel, rank, name)
        # the logged total is the weighted sum of the logged terms (each reduced on its own)
        for record in logged:
            total = sum(
                getattr(weights, f"{term}_weight") * record[f"loss/{term}"]
                for term in ("dino", "ibot", "koleo", "contrast")
            )
            assert record["loss/total"] == pytest.approx(total, rel=1e-5), (parallel, record)
        ckpt = load_checkpoint(str(tmp_path / parallel / "checkpoints" / "ckpt-00000003.pt"))
        assert ckpt["world_size"] == 2 and len(ckpt["loader"]) == 2
        assert [state["batches"] for state in ckpt["loader"]] == [3, 3]  # 3 batches per rank
        assert all(
            isinstance(v, torch.Tensor) and not hasattr(v, "to_local")
            for v in ckpt["student"].values()
        )
        backbone, info = load_backbone_for_eval(tmp_path / parallel)
        assert info["step"] == (4 if parallel == "fsdp" else 3)
        assert torch.isfinite(extract(backbone, torch.rand(1, 3, 32, 32))["cls"]).all()
    ddp, fsdp = (
        [json.loads(line) for line in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
        for p in ("ddp", "fsdp")
    )
    # Step 1 runs the same initial weights on the same batches: DDP and FSDP2 give one loss.
    for name in ("loss/dino", "loss/ibot", "loss/koleo", "loss/contrast", "loss/total"):
        assert fsdp[0][name] == pytest.approx(ddp[0][name], rel=1e-5), name
    assert [r["step"] for r in fsdp] == [1, 2, 3, 4]  # the resumed run continued at step 4
    for result in results:
        assert result["fsdp_resumed"]["step"] == 4
        assert result["fsdp_resumed"]["losses"]["loss/total"] == fsdp[3]["loss/total"]
        # FSDP2 resumed from its full-state checkpoint = the same run uninterrupted.
        uninterrupted = result["fsdp_uninterrupted"]
        assert uninterrupted["step"] == 4
        for name, value in uninterrupted["losses"].items():
            assert result["fsdp_resumed"]["losses"][name] == pytest.approx(value, rel=1e-6), name
