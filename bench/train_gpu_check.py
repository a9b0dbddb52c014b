"""The ``--check`` of ``bench/train_gpu.py``: W ranks holding a split batch against one process
holding the whole batch (what is compared, and to which tolerance, is listed in that script's
docstring).

``run_check(args)`` runs under torchrun: rank 0 first trains the one-process reference
(``train.train.main`` on fixed batches, before ``torch.distributed`` exists), then every rank
checks the losses (``train.losses.invariance``) and trains its share; rank 0 compares the final
states and prints one JSON record per check and a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from train.config import TrainConfig, load_config
from train.losses import KoLeoLoss
from train.meta_arch import MetaArch

# The micro model of the tests (tests/train/conftest.py) on fixed batches; lr from step 0 and no
# frozen last layer so that both steps move every parameter; Gram teacher taken at step 1.
CHECK_CONFIG = [
    "data.urls=pipe:fixed-batches", 'data.index=""', "data.num_workers=0",
    "crops.global_size=32", "crops.local_size=16", "crops.local_per_view=1",
    "model.arch=vit_tiny_patch16_224", "model.patch_size=8", "model.embed_dim=32",
    "model.depth=2", "model.num_heads=2", "model.head_prototypes=64", "model.head_hidden=32",
    "model.head_bottleneck=16", "model.contrast_hidden=32", "model.contrast_dim=16",
    "optim.steps=2", "optim.warmup_steps=0", "optim.freeze_last_layer_steps=0",
    "loss.warmup_teacher_temp_steps=0", "loss.contrast_crops=all", "loss.gram_weight=0.5",
    "loss.gram_start_step=1", "log_every=1", "ckpt_every=0", "resume=false", "export=false",
    "progress=false", "tensorboard=false", "threads=1",
]  # fmt: skip
CHECK_SAMPLES_PER_RANK = 4
STEP_TOL = 1e-5  # fp64 training steps
LOSS_TOL = 1e-6  # fp64 losses
# bf16 autocast: relative error of each logged loss, of the centres (to their largest entry) and
# of the parameter updates in norm, ||dθ_W - dθ_1|| / ||dθ_1||. Measured on 2 CPU ranks (gloo):
# 0.006, 0.0007 and 0.18 (the pre-fix losses gave 0.5, 0.036 and 0.29). The updates are the
# loose one: Adam's first steps move each parameter by about ±lr, so bf16 noise flips the
# parameters whose gradient is near 0; gradients are checked exactly by the fp64 runs.
BF16_TOL = {"loss": 3e-2, "centres": 1e-2, "update": 0.5}


def fixed_batch(cfg: TrainConfig, n: int, world: int, step: int, dtype: torch.dtype) -> dict:
    """A global batch of ``n`` samples in the loader's layout (crop-major), the same on every
    rank: iBOT masks on some images only and, at step 0, on the first rank's images only (the
    other ranks hold no masked patch); materials shared across ranks and within a rank."""
    g = torch.Generator().manual_seed(1000 + step)
    n_global, n_local = 2 * cfg.crops.global_per_view, 2 * cfg.crops.local_per_view
    gs, ls = cfg.crops.global_size, cfg.crops.local_size
    grid = gs // cfg.model.patch_size
    masks = torch.rand(n_global, n, grid, grid, generator=g) < 0.3
    masks[:, 1::3] = False
    if step == 0:
        masks[:, n // world :] = False
    return {
        "global": torch.randn(n_global * n, 3, gs, gs, generator=g, dtype=dtype),
        "local": torch.randn(n_local * n, 3, ls, ls, generator=g, dtype=dtype),
        "masks": masks.reshape(n_global * n, grid, grid),
        "labels": torch.arange(n) // 2 % max(1, n // 2 - 1),
        "keys": [f"fixed-{step}-{i}" for i in range(n)],
    }


def rank_share(batch: dict, rank: int, world: int) -> dict:
    """The samples ``torch.tensor_split`` gives ``rank``, every per-crop tensor kept crop-major."""
    n = batch["labels"].shape[0]
    samples = torch.tensor_split(torch.arange(n), world)[rank]
    out = {"labels": batch["labels"][samples], "keys": [batch["keys"][i] for i in samples]}
    for name in ("global", "local", "masks"):
        crops = batch[name].shape[0] // n
        rows = (torch.arange(crops)[:, None] * n + samples[None, :]).flatten()
        out[name] = batch[name][rows]
    return out


class FixedLoader:
    """Stands in for ``train.data.Loader`` in ``train.train.main``: this rank's share of
    ``FixedLoader.batches`` (global batches), one per step."""

    batches: list[dict] = []

    def __init__(
        self, shards, data, crops, patch, seed, rank=0, world=1, pin_memory=False, records=None
    ):
        self.rank, self.world = rank, world
        self.step, self.epoch, self.errors, self.streams = 0, 0, {}, {}
        self.skipped_samples = self.skipped_shards = 0

    def state_dict(self) -> dict:
        return {"batches": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["batches"])

    def __iter__(self):
        while True:
            yield rank_share(FixedLoader.batches[self.step], self.rank, self.world)
            self.step += 1


class RankChunkedKoLeo(KoLeoLoss):
    """One process standing in for W ranks: the mean of the KoLeo of each rank's share (the
    documented per-rank objective); ``gaps`` records how far the whole-batch KoLeo is."""

    world = 1
    gaps: list[float] = []

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        koleo = super().forward
        chunks = torch.tensor_split(torch.arange(features.shape[0]), self.world)
        shares = [koleo(features[c], None if labels is None else labels[c]) for c in chunks]
        per_rank = torch.stack(shares).mean()
        with torch.no_grad():
            gap = (per_rank - koleo(features, labels)).abs()
        RankChunkedKoLeo.gaps.append(float(gap))
        return per_rank


@contextlib.contextmanager
def _one_process():
    """``train.train.main`` as one process inside a torchrun rank (before init_process_group)."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK")}
    os.environ.update(WORLD_SIZE="1", RANK="0")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_trainer(
    overrides: list[str], batches: list[dict], dtype: torch.dtype, koleo_world: int = 0
) -> None:
    """``train.train.main`` on ``batches`` (each rank takes its share); ``koleo_world`` > 0: KoLeo
    as the mean over that many rank shares (for the one-process reference)."""
    import train.meta_arch as meta_arch
    import train.train as trainer

    FixedLoader.batches = batches
    saved = (trainer.Loader, meta_arch.KoLeoLoss, torch.get_default_dtype())
    trainer.Loader = FixedLoader
    if koleo_world:
        RankChunkedKoLeo.world, RankChunkedKoLeo.gaps = koleo_world, []
        meta_arch.KoLeoLoss = RankChunkedKoLeo
    cfg = load_config(None, overrides)
    if os.environ.get("RANK", "0") == "0":  # metrics.jsonl is appended to: start afresh
        shutil.rmtree(cfg.out_dir, ignore_errors=True)
    torch.set_default_dtype(dtype)
    try:
        trainer.main(cfg)
    finally:
        trainer.Loader, meta_arch.KoLeoLoss = saved[0], saved[1]
        torch.set_default_dtype(saved[2])


def step_variants(device: torch.device, bf16: bool) -> list[dict]:
    """The training-step runs; those with the same ``ref`` share one one-process reference."""
    runs = [
        ("ddp", "centering", "fp64"),
        ("fsdp", "centering", "fp64"),
        ("ddp", "sinkhorn", "fp64"),
    ]
    if bf16 or device.type == "cuda":
        runs += [("ddp", "centering", "bf16"), ("fsdp", "centering", "bf16")]
    return [
        {
            "name": f"step_{parallel}_{centering}_{precision}",
            "ref": f"{centering}_{precision}",
            "parallel": parallel,
            # fp64: parameters made in fp64 (default dtype), no autocast.
            "dtype": torch.float64 if precision == "fp64" else torch.float32,
            "overrides": [
                f"loss.centering={centering}",
                "precision=fp32" if precision == "fp64" else "precision=bf16",
            ],
        }
        for parallel, centering, precision in runs
    ]


def _trainer_overrides(variant: dict, out_dir: Path, batch: int, device: torch.device) -> list[str]:
    return CHECK_CONFIG + variant["overrides"] + [
        f"out_dir={out_dir}", f"data.batch_size={batch}", f"parallel={variant['parallel']}",
        f"device={device.type}",
    ]  # fmt: skip


def _batches(n: int, world: int, variant: dict) -> list[dict]:
    cfg = load_config(None, CHECK_CONFIG)
    return [fixed_batch(cfg, n, world, step, variant["dtype"]) for step in range(cfg.optim.steps)]


def _final_state(out_dir: Path) -> dict:
    from train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(out_dir / "checkpoints" / "ckpt-00000002.pt"))
    metrics = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        **{part: ckpt[part] for part in ("student", "teacher", "gram_teacher")},
        "centres": {k: v for k, v in ckpt["buffers"].items() if k.endswith("center")},
        "losses": [{k: v for k, v in m.items() if k.startswith("loss/")} for m in metrics],
    }


def _max_err(got: dict, want: dict) -> float:
    errs = [0.0]
    for k, w in want.items():
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        errs.append(float((got[k].double() - w.double()).abs().max()) / scale if w.numel() else 0.0)
    return max(errs)


def compare_steps(variant: dict, got: dict, want: dict, initial: dict | None) -> dict:
    """One record: the W-rank run's final state against the one-process run's."""
    loss_errs = [
        abs(g[k] - w[k]) / max(1.0, abs(w[k]))
        for g, w in zip(got["losses"], want["losses"], strict=True) for k in w
    ]  # fmt: skip
    record = {"check": variant["name"], "loss_err": max(loss_errs)}
    if variant["dtype"] == torch.float64:
        for part in ("student", "teacher", "gram_teacher", "centres"):
            record[f"{part}_err"] = _max_err(got[part], want[part])
        record["tol"] = STEP_TOL
        record["ok"] = max(v for k, v in record.items() if k.endswith("_err")) <= STEP_TOL
        return record
    num = sum(
        float((got["student"][k].double() - want["student"][k].double()).norm() ** 2)
        for k in want["student"]
    )
    den = sum(
        float((want["student"][k].double() - initial[k].double()).norm() ** 2)
        for k in want["student"]
    )
    centre_errs = [
        float((got["centres"][k] - w).abs().max() / w.abs().max().clamp(min=1e-12))
        for k, w in want["centres"].items()
    ]  # fmt: skip
    record.update(
        update_err=(num / max(den, 1e-30)) ** 0.5, centres_err=max(centre_errs), tol=BF16_TOL
    )
    record["ok"] = all(record[f"{k}_err"] <= BF16_TOL[k] for k in ("loss", "centres", "update"))
    return record


def run_check(args: argparse.Namespace) -> int:
    """``--check``: see the module docstring. Every rank returns the same status."""
    import tempfile

    import torch.distributed as dist

    from train.losses import invariance

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world < 2:
        print("train_gpu.py --check compares W ranks with one process: run it under "
              "torchrun --nproc-per-node 2 (or more)", file=sys.stderr)  # fmt: skip
        return 2
    device = (
        torch.device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
        if args.device == "cuda"
        else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    root = Path(args.check_dir or tempfile.gettempdir()) / "phieat-check"
    only = set(args.check_only)
    n = CHECK_SAMPLES_PER_RANK * world
    variants = [v for v in step_variants(device, args.check_bf16) if not only or v["name"] in only]

    # 1. One process, the whole batch: before torch.distributed exists.
    refs = invariance.reference(world, device)
    gaps: dict[str, list[float]] = {}
    if rank == 0:
        for ref in dict.fromkeys(v["ref"] for v in variants):
            variant = next(v for v in variants if v["ref"] == ref)
            overrides = _trainer_overrides(variant, root / ref / "one", n, device)
            with _one_process():
                run_trainer(overrides, _batches(n, world, variant), variant["dtype"], world)
            gaps[ref] = RankChunkedKoLeo.gaps

    # 2. W ranks, each its share.
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        device_id=device if device.type == "cuda" else None,
    )
    records = invariance.check(refs, device, LOSS_TOL, only=only)
    for variant in variants:
        out_dir = root / variant["ref"] / variant["name"]
        overrides = _trainer_overrides(variant, out_dir, n // world, device)
        run_trainer(overrides, _batches(n, world, variant), variant["dtype"])
        dist.barrier()
        if rank == 0:
            initial = None
            if variant["dtype"] != torch.float64:
                cfg = load_config(None, _trainer_overrides(variant, out_dir, n, device))
                torch.manual_seed(cfg.seed)
                initial = MetaArch(cfg).student.state_dict()
            record = compare_steps(
                variant, _final_state(out_dir), _final_state(root / variant["ref"] / "one"), initial
            )
            record["koleo_per_rank_gap"] = max(gaps[variant["ref"]])
            records.append(record)
    failed = torch.tensor([0 if all(r["ok"] for r in records) else 1], device=device)
    dist.all_reduce(failed)  # rank 0 holds the step records
    if rank == 0:
        for record in records:
            print(json.dumps(record))
        verdict = "FAILED" if int(failed) else "OK"
        print(f"world-size check on {world} ranks ({device.type}): {verdict}")
        if args.check_out:
            Path(args.check_out).write_text(json.dumps(records, indent=1))
    dist.destroy_process_group()
    return 1 if int(failed) else 0
