"""2-process CPU gloo runs under torchrun: DDP and FSDP2 train; contrastive positives cross ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import load_checkpoint
from train.models import extract, load_backbone_for_eval

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.slow
def test_torchrun_ddp_and_fsdp2(shard_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(HERE / "dist_worker.py"), str(shard_dir), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert result["contrast"]["remote_positives"] > 0
        assert result["contrast"]["mean_matches_single_process"]
        assert result["contrast"]["grad_finite"]
        for parallel in ("ddp", "fsdp"):
            assert result[parallel]["step"] == 3
        assert result["fsdp_resumed"]["step"] == 4
    # Losses are all-reduced before logging: every rank reports the same value.
    for parallel in ("ddp", "fsdp"):
        assert results[0][parallel]["total"] == pytest.approx(
            results[1][parallel]["total"], rel=1e-6
        )
        ckpt = load_checkpoint(str(tmp_path / parallel / "checkpoints" / "ckpt-00000003.pt"))
        assert ckpt["world_size"] == 2 and len(ckpt["loader"]) == 2
        assert all(
            isinstance(v, torch.Tensor) and not hasattr(v, "to_local")
            for v in ckpt["student"].values()
        )
        backbone, info = load_backbone_for_eval(tmp_path / parallel)
        assert info["step"] == (4 if parallel == "fsdp" else 3)
        assert torch.isfinite(extract(backbone, torch.rand(1, 3, 32, 32))["cls"]).all()
    fsdp_steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()
    ]
    assert fsdp_steps == [1, 2, 3, 4]  # the resumed run continued at step 4
