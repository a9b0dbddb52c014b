"""Training loop: student + EMA teacher on shard streams, one CPU to multi-node torchrun.

``main(cfg)`` runs ``cfg.optim.steps`` optimizer steps (all schedules are defined in steps):
AdamW (fused on CUDA) with cosine lr + warmup scaled by the global batch, cosine weight
decay, teacher momentum 0.992 -> 1, teacher temperature warmup, gradient clipping, the
prototype layer frozen for the first steps, optional layer-wise lr decay, bf16 autocast on
CUDA, optional ``torch.compile``; DDP or FSDP2 (``fully_shard`` per block) under torchrun.
A non-finite loss aborts before the optimizer steps. Rank 0 logs every loss term, lr, wd,
momentum, teacher temperature, images/s, data-wait fraction and GPU memory to
``metrics.jsonl`` and TensorBoard, with a progress bar. Checkpoints (``train.checkpoint``)
every ``ckpt_every`` steps, at the end and on SIGTERM; a restart resumes from the newest
that loads (a damaged newer one is skipped, with a warning).

Before the model is built, ``data.urls`` is resolved (``train.preflight.prepare_data``: missing
paths and a dataset without ``index.json`` are one-line errors) and the checkpoint to resume is
loaded. A resumed run must train the same objective on the same data: a change of a key in
``train.preflight.CONFIG_FIXED`` (or of the dataset's ``index.json``) is refused unless
``allow_config_change = true``; a change of a ``CONFIG_SCHEDULE`` key is warned about. Either
is recorded in the checkpoints and the export (``config_history``), and ``config.toml`` keeps
the settings the run started with (the new ones go to ``config.resume-<step>.toml``).
Warnings name a dataset smaller than one batch and a run that never leaves its warm-up; a
``max_minutes`` stop is logged with the step reached. Skipped unreadable samples and shards
(``train.data``) are logged as ``skipped_samples`` / ``skipped_shards``.
The EMA teacher backbone is exported to ``<out_dir>/export/backbone.pt``.

This module holds the three parts of a run, each a function: ``setup`` (checks, model,
optimizer, loader, resume: a ``Run``), ``train_step`` (one optimizer step) and ``main`` (the
loop: a step, its log line, checkpoints, then the final checkpoint and the export). The
pieces they call live beside it: ``train.preflight`` (data, resume and config checks),
``train.optim`` (schedules, AdamW groups), ``train.runtime`` (distributed set-up, parallel
wrappers, autocast, batches to the device), ``train.run_state`` (``Run``; ``save``,
``restore``, ``export``), ``train.reporting`` (``metrics.jsonl``, TensorBoard, the progress bar)
and ``train.checkpoint`` (the checkpoint files).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from train.checkpoint import checkpoint_dir
from train.config import ConfigError, TrainConfig
from train.data import Loader
from train.meta_arch import MetaArch
from train.optim import make_optimizer, schedules
from train.preflight import find_resume, prepare_data, record_config
from train.reporting import StepLog
from train.run_state import Run, StepResult, export, restore, save
from train.runtime import apply_parallel, autocast, setup_distributed, setup_logging, to_device

log = logging.getLogger("phieat.train")
# ``setup`` builds the model and the loader through the names ``MetaArch`` and ``Loader`` of this
# module, so that a bench or a test can stand in for either by replacing ``train.train.<name>``.
LOSS_NAMES = ("dino", "ibot", "koleo", "gram", "contrast", "total")


def setup(cfg: TrainConfig) -> Run:
    """Check the settings and the data, build model, optimizer and loader, and resume from the
    newest checkpoint: the run, ready for its next step."""
    rank, world, device = setup_distributed(cfg)
    setup_logging(rank)
    if cfg.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is a file, not a folder")
    # Everything a user can get wrong is checked before the model is built.
    data = prepare_data(cfg, world)
    resumed, history = find_resume(cfg, data.index_hash)
    if cfg.max_minutes > 0:
        log.info(
            "max_minutes=%g: the run stops, checkpoints and exports when that wall-clock time is "
            "spent, even before optim.steps=%d (max_minutes=0 lifts the cap)",
            cfg.max_minutes,
            cfg.optim.steps,
        )

    torch.manual_seed(cfg.seed)
    meta = MetaArch(cfg).to(device)
    student_call = apply_parallel(cfg, meta, device, world)
    optimizer = make_optimizer(cfg, meta.student, device)
    patch = meta.student.backbone.patch_size
    for name, size in (
        ("crops.global_size", cfg.crops.global_size),
        ("crops.local_size", cfg.crops.local_size),
    ):
        if size % patch:
            raise ConfigError(
                f"{name} = {size} is not a multiple of the patch size {patch} of {cfg.model.arch}"
            )
    loader = Loader(
        data.shards, cfg.data, cfg.crops, patch, cfg.seed, rank, world,
        pin_memory=device.type == "cuda", records=data.records,
    )  # fmt: skip
    run = Run(
        cfg, rank, world, device, out_dir, meta, student_call, optimizer, loader,
        autocast(cfg, device), data.index_hash, history,
    )  # fmt: skip
    if resumed is not None:
        run.step = restore(run, *resumed)
        resumed = None  # the model holds it now
    if rank == 0:
        record_config(out_dir, cfg, run.step)
    if cfg.compile:
        run.student_call = torch.compile(run.student_call)
    n_params = sum(p.numel() for p in meta.student.backbone.parameters())
    log.info(
        "%s backbone: %.2fM params; %d rank(s) on %s; global batch %d",
        cfg.model.arch,
        n_params / 1e6,
        world,
        device,
        cfg.data.batch_size * world,
    )
    return run


def train_step(run: Run, batch: dict) -> StepResult:
    """One optimizer step on a host batch: schedules, forward (autocast), one all-reduce of the
    loss terms and stop flags, finite check, backward, prototype-layer freeze, clipping, AdamW,
    EMA teacher. Raises ``FloatingPointError`` before anything is updated on a non-finite loss."""
    cfg, meta, optimizer, step = run.cfg, run.meta, run.optimizer, run.step
    batch = to_device(batch, run.device, cfg.crops.on_device, cfg.crops)
    sched = schedules(cfg, step, run.world)
    for group in optimizer.param_groups:
        group["lr"] = sched["lr"] * group["lr_scale"]
        group["weight_decay"] = sched["wd"] * group["wd_scale"]
    # Model randomness (drop path) is a function of (seed, step, rank): resume is exact.
    torch.manual_seed((cfg.seed * 1_000_003 + step * 7919 + run.rank) % (2**63))
    meta.maybe_refresh_gram(step)
    with run.autocast:
        losses = meta(batch, sched["teacher_temp"], step, run.student_call)
    names = [n for n in LOSS_NAMES if n in losses]
    out_of_time = cfg.max_minutes > 0 and time.perf_counter() - run.started > cfg.max_minutes * 60
    flags = [
        float(run.preempt.requested),
        float(out_of_time),
        float(run.loader.skipped_samples),
        float(run.loader.skipped_shards),
    ]
    # One all-reduce per step: the loss terms (for logging and the finite check, so every rank
    # stops together), the stop flags and the skipped-data counts.
    reduced = torch.cat(
        [
            torch.stack([losses[n].detach().float() for n in names]),
            torch.tensor(flags, device=run.device),
        ]
    )
    if run.world > 1:
        dist.all_reduce(reduced)
    values = (reduced[:-4] / run.world).tolist()
    result = StepResult(
        losses=dict(zip(names, values, strict=True)),
        sched=sched,
        grad_norm=float("nan"),
        stop_requested=reduced[-4].item() > 0,
        time_up=reduced[-3].item() > 0,
        skipped_samples=int(reduced[-2].item()),
        skipped_shards=int(reduced[-1].item()),
    )
    if not math.isfinite(values[-1]):
        terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values, strict=True))
        raise FloatingPointError(
            f"non-finite loss at step {step} ({terms}); nothing was updated. Lower optim.base_lr, "
            f"raise optim.warmup_steps, or check the data; the last checkpoint is in {checkpoint_dir(cfg)}"
        )
    losses["total"].backward()
    if step < cfg.optim.freeze_last_layer_steps:
        for group in optimizer.param_groups:
            if group["is_last_layer"]:
                for p in group["params"]:
                    p.grad = None
    if cfg.optim.clip_grad > 0:
        norm = torch.nn.utils.clip_grad_norm_(meta.student.parameters(), cfg.optim.clip_grad)
        result.grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    meta.update_teacher(sched["momentum"])
    run.step += 1
    return result


def main(cfg: TrainConfig) -> dict:
    """Train as configured; returns a summary (final step, last losses, throughput, export path)."""
    run = setup(cfg)
    stop_at = cfg.stop_at_step or cfg.optim.steps
    report = StepLog(run, stop_at)
    run.preempt.install()
    export_path = None
    data_iter = iter(run.loader)
    run.started = time.perf_counter()
    time_up = False
    try:
        while run.step < stop_at:
            t0 = time.perf_counter()
            batch = next(data_iter)
            report.waited(time.perf_counter() - t0)
            digest = report.digest(run, batch)
            result = train_step(run, batch)
            time_up = result.time_up
            report.log_step(run, result, digest)
            if result.stop_requested:
                log.warning("stopping at step %d on request (SIGTERM)", run.step)
                break
            if time_up:
                log.warning(
                    "stopped by max_minutes=%g at step %d of optim.steps=%d, before the schedule "
                    "ended: checkpointing and exporting (the export records the step); run again "
                    "to continue, or set max_minutes=0 to run every step",
                    cfg.max_minutes,
                    run.step,
                    cfg.optim.steps,
                )
                break
            if cfg.ckpt_every > 0 and run.step % cfg.ckpt_every == 0 and run.step < stop_at:
                save(run)
        save(run)
        if cfg.export and (run.step >= cfg.optim.steps or time_up):
            export_path = export(run)
    finally:
        run.preempt.uninstall()
        report.close()
    report.summary(run)
    return {
        "step": run.step,
        "last": report.last,
        "export": export_path,
        "out_dir": str(run.out_dir),
        "rank": run.rank,
        "world": run.world,
    }
