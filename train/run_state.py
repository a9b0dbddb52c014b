"""A training run's state: the ``Run`` that ``train.train.setup`` builds, and how it is saved,
restored and exported.

``Run`` holds everything the step, the log and the checkpoints read (config, ranks, device,
model, optimizer, loader, step, config history); ``StepResult`` is what one optimizer step
reports. ``save`` gathers the full state of a run (a collective: every rank calls it) into
the checkpoint payload described in ``train.checkpoint`` and lets rank 0 write it;
``restore`` puts a loaded checkpoint back into a freshly built run; ``export`` writes the
EMA teacher backbone to ``<out_dir>/export/backbone.pt``. The file side (atomic writes,
finding the newest checkpoint, FSDP2 state dicts) is ``train.checkpoint``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from train.checkpoint import (
    PreemptionFlag,
    atomic_torch_save,
    checkpoint_dir,
    checkpoint_path,
    load_module_state,
    load_optimizer_state,
    module_state,
    optimizer_state,
    prune_checkpoints,
)
from train.config import ConfigError, TrainConfig, to_dict
from train.data import Loader
from train.meta_arch import MetaArch, backbone_kwargs
from train.models import export_backbone

log = logging.getLogger("phieat.train")


@dataclass
class Run:
    """One training run on this rank, as ``setup`` builds it."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    out_dir: Path
    meta: MetaArch
    # What the forward calls: the student, or its DDP / ``torch.compile`` wrapper.
    student_call: nn.Module
    optimizer: torch.optim.Optimizer
    loader: Loader
    # bf16 autocast on CUDA (``precision``), else a null context.
    autocast: contextlib.AbstractContextManager
    # The dataset's identity (``train.preflight.data_identity``), kept in every checkpoint.
    index_hash: str
    # Settings changed at resumes (``train.preflight.find_resume``), kept in checkpoints and export.
    history: list[dict]
    step: int = 0  # optimizer steps taken
    # Set by SIGTERM / SIGUSR1 once ``main`` installs it: the run checkpoints and stops.
    preempt: PreemptionFlag = field(default_factory=PreemptionFlag)
    started: float = 0.0  # ``time.perf_counter()`` when the loop started, for ``max_minutes``

    @property
    def fsdp(self) -> bool:
        return self.world > 1 and self.cfg.parallel == "fsdp"


@dataclass
class StepResult:
    """What one optimizer step reports; the same on every rank (one all-reduce)."""

    losses: dict[str, float]  # each loss term, mean over ranks; "total" last
    sched: dict[str, float]  # lr, wd, momentum, teacher_temp used (``train.optim.schedules``)
    grad_norm: float  # before clipping; nan without optim.clip_grad
    stop_requested: bool  # a rank received SIGTERM / SIGUSR1
    time_up: bool  # a rank ran past max_minutes
    skipped_samples: int  # unreadable data skipped so far, summed over ranks
    skipped_shards: int


def save(run: Run) -> str | None:
    """Gather the full state (collective) and let rank 0 write it atomically; returns the path
    on rank 0."""
    cfg, meta, fsdp, world = run.cfg, run.meta, run.fsdp, run.world
    loader_states: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(loader_states, run.loader.state_dict())
    else:
        loader_states = [run.loader.state_dict()]
    payload = {
        "step": run.step,
        "student": module_state(meta.student, fsdp),
        "teacher": module_state(meta.teacher, fsdp),
        "gram_teacher": module_state(meta.gram_teacher, fsdp)
        if meta.gram_teacher is not None
        else {},
        "buffers": {
            "dino_center": meta.dino_loss.center.detach().cpu().clone(),
            "ibot_center": meta.ibot_loss.center.detach().cpu().clone(),
            "gram_snapshot_step": int(meta.gram_snapshot_step),
        },
        "optimizer": optimizer_state(meta.student, run.optimizer, fsdp),
        "loader": loader_states,
        "config": to_dict(cfg),
        "backbone_kwargs": backbone_kwargs(cfg),
        "index_hash": run.index_hash,
        "physical_augmentation": cfg.data.physical_augmentation,
        "world_size": world,
        "config_history": run.history,
    }
    path = None
    if run.rank == 0:
        ckpt_dir = checkpoint_dir(cfg)
        path = checkpoint_path(ckpt_dir, run.step)
        atomic_torch_save(payload, path)
        prune_checkpoints(ckpt_dir, cfg.keep_last)
        log.info("checkpoint %s", path)
    if world > 1:
        dist.barrier()
    return path


def restore(run: Run, path: str, state: dict) -> int:
    """Load a checkpoint's weights, centres, optimizer and (same world size) data position into
    ``run``; returns its step. A model that does not match is a ``ConfigError`` naming ``path``."""
    meta, fsdp = run.meta, run.fsdp
    try:
        load_module_state(meta.student, state["student"], fsdp)
        load_module_state(meta.teacher, state["teacher"], fsdp)
        if meta.gram_teacher is not None and state["gram_teacher"]:
            load_module_state(meta.gram_teacher, state["gram_teacher"], fsdp)
        meta.dino_loss.center.copy_(state["buffers"]["dino_center"])
        meta.ibot_loss.center.copy_(state["buffers"]["ibot_center"])
        meta.gram_snapshot_step.fill_(int(state["buffers"]["gram_snapshot_step"]))
        load_optimizer_state(meta.student, run.optimizer, state["optimizer"], fsdp)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"{path} cannot be continued with these settings: the model it holds does not match "
            f"({first} {detail[len(first) :]}). Train into a new out_dir or set resume=false"
        ) from None
    if len(state["loader"]) == run.world:
        run.loader.load_state_dict(state["loader"][run.rank])
    else:
        log.warning(
            "%s was written with %d ranks, now %d: the data stream restarts at its epoch",
            path,
            len(state["loader"]),
            run.world,
        )
        run.loader.streams = {}
    log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


def export(run: Run) -> str | None:
    """Write the EMA teacher backbone (collective under FSDP2: every rank calls it); returns
    the path on rank 0."""
    cfg = run.cfg
    teacher_backbone = module_state(run.meta.teacher.backbone, run.fsdp)
    if run.rank != 0:
        return None
    path = str(run.out_dir / "export" / "backbone.pt")
    export_backbone(
        teacher_backbone, backbone_kwargs(cfg), path,
        {
            "step": run.step,
            "config": to_dict(cfg),
            "physical_augmentation": cfg.data.physical_augmentation,
            "time_limited": run.step < cfg.optim.steps,
            "config_history": run.history,
        },
    )  # fmt: skip
    log.info("exported teacher backbone to %s", path)
    return path
