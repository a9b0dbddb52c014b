"""Checkpoints: atomic, keep the last k, newest found automatically, loadable with ``weights_only=True``.

A checkpoint ``<out_dir>/checkpoints/ckpt-<step:08d>.pt`` is one ``torch.save`` of plain
tensors, numbers, strings, lists and dicts::

    step, student, teacher, gram_teacher, buffers (DINO/iBOT centres, Gram snapshot step),
    optimizer, loader (one state per rank), config (resolved, dict), backbone_kwargs,
    index_hash, physical_augmentation, world_size

It is written to a temporary name and renamed (or moved, for fsspec URLs such as
``s3://bucket/run/checkpoints``), so a crash never leaves a half-written checkpoint. With
FSDP2 the full (unsharded) state is gathered to rank 0 before writing, so a checkpoint can
be resumed with DDP, FSDP2 or one process.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch
from torch import nn

log = logging.getLogger("phieat.train")

CKPT_RE = re.compile(r"ckpt-(\d{8})\.pt$")


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def atomic_torch_save(payload: Any, path: str) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename (local) or move (fsspec)."""
    if _is_url(path):
        fs, fs_path = fsspec.core.url_to_fs(path)
        tmp = fs_path + ".tmp"
        with fs.open(tmp, "wb") as handle:
            torch.save(payload, handle)
        fs.mv(tmp, fs_path)
        return
    target = Path(path.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    return f"{ckpt_dir.rstrip('/')}/ckpt-{step:08d}.pt"


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``[(step, path)]`` sorted by step; empty when the folder does not exist."""
    fs, path = fsspec.core.url_to_fs(ckpt_dir)
    if not fs.exists(path):
        return []
    found = []
    for name in fs.ls(path, detail=False):
        match = CKPT_RE.search(name)
        if match:
            found.append((int(match.group(1)), checkpoint_path(ckpt_dir, int(match.group(1)))))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str) -> str | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune_checkpoints(ckpt_dir: str, keep_last: int) -> None:
    if keep_last <= 0:
        return
    fs, _ = fsspec.core.url_to_fs(ckpt_dir)
    for _, path in list_checkpoints(ckpt_dir)[:-keep_last]:
        fs.rm(fsspec.core.url_to_fs(path)[1])


def load_checkpoint(path: str) -> dict:
    with fsspec.open(path, "rb") as handle:
        return torch.load(handle, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- state


def _options(full: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True)


def module_state(module: nn.Module, fsdp: bool) -> dict:
    """Full CPU state dict (collective under FSDP2: every rank must call it)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=_options())
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def load_module_state(module: nn.Module, state: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(module, state, options=_options())
        return
    module.load_state_dict(state, strict=True)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_options())
    return optimizer.state_dict()


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool
) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=_options())
        return
    optimizer.load_state_dict(state)


# ----------------------------------------------------------------------------- preemption


class PreemptionFlag:
    """Set by SIGTERM (and SIGUSR1, common for cluster preemption); the loop checkpoints and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: will checkpoint and stop after this step", signum)
        self.requested = True

    def install(self) -> PreemptionFlag:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                return self
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
