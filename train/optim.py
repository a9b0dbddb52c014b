"""The optimizer and every schedule, all defined in optimizer steps.

``schedules(cfg, step, world)`` gives a step's learning rate (cosine with linear warmup, peak
scaled by the global batch: ``peak_lr``), weight decay, teacher momentum and teacher
temperature. ``make_optimizer`` builds AdamW (fused on CUDA) over ``param_groups``: one group
per (layer, decay, prototype layer) with ``lr_scale`` (layer-wise lr decay), ``wd_scale`` (0
for norms, biases and tokens) and ``is_last_layer``; ``train.train.train_step`` multiplies the
scheduled values by those scales every step and freezes the prototype layer at first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from train.config import TrainConfig

# ----------------------------------------------------------------------------- schedules


def cosine(
    step: int, total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0
) -> float:
    """Linear warmup from ``warmup_start`` to ``start`` over ``warmup`` steps, then cosine to ``end``."""
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / max(1, warmup)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def peak_lr(cfg: TrainConfig, world: int) -> float:
    """``optim.base_lr`` scaled by the global batch over 1024 (``optim.lr_scaling``)."""
    ratio = cfg.data.batch_size * world / 1024.0
    scale = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[cfg.optim.lr_scaling]
    return cfg.optim.base_lr * scale


def schedules(cfg: TrainConfig, step: int, world: int) -> dict[str, float]:
    """``lr``, ``wd``, ``momentum`` (teacher EMA) and ``teacher_temp`` at ``step``."""
    o, loss = cfg.optim, cfg.loss
    temp_warm = loss.warmup_teacher_temp_steps
    if step < temp_warm:
        teacher_temp = (
            loss.warmup_teacher_temp
            + (loss.teacher_temp - loss.warmup_teacher_temp) * step / temp_warm
        )
    else:
        teacher_temp = loss.teacher_temp
    return {
        "lr": cosine(step, o.steps, peak_lr(cfg, world), o.min_lr, o.warmup_steps),
        "wd": cosine(step, o.steps, o.weight_decay, o.weight_decay_end),
        "momentum": cosine(step, o.steps, o.momentum_teacher, o.momentum_teacher_end),
        "teacher_temp": teacher_temp,
    }


# ----------------------------------------------------------------------------- optimizer


def _layer_id(name: str, depth: int) -> int:
    if name.startswith("backbone."):
        rest = name[len("backbone.") :]
        if rest.startswith("vit.blocks."):
            return int(rest.split(".")[2]) + 1
        if rest.startswith(("vit.norm", "vit.fc_norm", "vit.head")):
            return depth + 1
        return 0
    return depth + 1


def param_groups(student: nn.Module, layer_decay: float) -> list[dict]:
    """One group per (layer, decay) with ``lr_scale`` (layer decay) and ``wd_scale`` (0 for norms/biases/tokens)."""
    depth = len(student.backbone.blocks)
    groups: dict[tuple[int, bool, bool], dict] = {}
    last_layer = {
        id(p)
        for h in (student.dino_head, student.ibot_head)
        if h is not None
        for p in h.last_layer.parameters()
    }
    for name, param in student.named_parameters():
        if not param.requires_grad:
            continue
        layer = _layer_id(name, depth)
        no_wd = param.ndim <= 1 or name.endswith(("token", "pos_embed", "bias")) or "gamma" in name
        is_last = id(param) in last_layer
        key = (layer, no_wd, is_last)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "wd_scale": 0.0 if no_wd else 1.0,
                "is_last_layer": is_last,
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def make_optimizer(
    cfg: TrainConfig, student: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (fused on CUDA with ``optim.fused``); lr and weight decay are
    set every step from ``schedules`` times each group's scales."""
    groups = param_groups(student, cfg.optim.layer_decay)
    kwargs: dict[str, Any] = {"lr": 0.0, "betas": tuple(cfg.optim.betas), "weight_decay": 0.0}
    if cfg.optim.fused and device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)
