"""Run by ``torchrun --nproc-per-node 2`` from test_distributed.py (CPU, gloo).

Computes the contrastive loss over crops split between the ranks (its value and gradient are
compared with the single-process formula), then trains the micro model a few steps with DDP,
then with FSDP2, and resumes the FSDP2 run. Each rank writes ``result-<rank>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import micro_overrides  # noqa: E402

from train.config import load_config  # noqa: E402
from train.losses import ContrastLoss  # noqa: E402
from train.train import main  # noqa: E402


def contrast_across_ranks(rank: int) -> dict:
    """Each rank holds 4 of 8 crops; the single-process loss and gradient, written from the
    formula over all 8, are the known values."""
    gen = torch.Generator().manual_seed(123)
    everything = torch.randn(8, 6, generator=gen)
    labels_all = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    z = everything[rank * 4 : rank * 4 + 4].clone().requires_grad_(True)
    loss_fn = ContrastLoss(temperature=0.2)
    loss = loss_fn(z, labels_all[rank * 4 : rank * 4 + 4])
    loss.backward()
    # Single-process value over all 8 anchors (every anchor has a positive), from the formula.
    whole = everything.clone().requires_grad_(True)
    zn = torch.nn.functional.normalize(whole, dim=-1)
    sims = zn @ zn.t() / 0.2
    terms = []
    for i in range(8):
        others = [k for k in range(8) if k != i]
        pos = [j for j in others if labels_all[j] == labels_all[i]]
        terms.append(-(torch.logsumexp(sims[i, pos], 0) - torch.logsumexp(sims[i, others], 0)))
    reference = torch.stack(terms).mean()
    reference.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    world = dist.get_world_size()
    # DDP averages gradients over ranks: a rank's gradient on its rows is W x the global one.
    grad_err = (z.grad / world - whole.grad[rank * 4 : rank * 4 + 4]).abs().max().item()
    return {
        "stats": loss_fn.last_stats,
        "mean": mean.item() / world,
        "reference": reference.item(),
        "grad_err": grad_err,
        "grad_scale": whole.grad.abs().max().item(),
    }


def main_worker(shard_dir: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result: dict = {"contrast": contrast_across_ranks(rank)}
    for parallel in ("ddp", "fsdp"):
        overrides = micro_overrides(shard_dir, out / parallel, steps=3) + [f"parallel={parallel}"]
        if parallel == "fsdp":  # a 4-step run stopped after step 3, resumed below
            overrides = micro_overrides(shard_dir, out / parallel, steps=4)
            overrides += ["parallel=fsdp", "stop_at_step=3"]
        summary = main(load_config(None, overrides))
        result[parallel] = {
            "step": summary["step"],
            "losses": {k: v for k, v in summary["last"].items() if k.startswith("loss/")},
            "export": summary["export"],
        }
    # Resume the FSDP2 run from its full-state checkpoint and train one more step.
    summary = main(
        load_config(None, micro_overrides(shard_dir, out / "fsdp", steps=4) + ["parallel=fsdp"])
    )
    result["fsdp_resumed"] = {
        "step": summary["step"],
        "losses": {k: v for k, v in summary["last"].items() if k.startswith("loss/")},
    }
    # The same 4 steps without the interruption: the resumed run must match it.
    summary = main(
        load_config(
            None, micro_overrides(shard_dir, out / "fsdp-full", steps=4) + ["parallel=fsdp"]
        )
    )
    result["fsdp_uninterrupted"] = {
        "step": summary["step"],
        "losses": {k: v for k, v in summary["last"].items() if k.startswith("loss/")},
    }
    (out / f"result-{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main_worker(Path(sys.argv[1]), Path(sys.argv[2]))
