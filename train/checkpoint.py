"""Checkpoints: atomic, keep the last k, newest found automatically, loadable with ``weights_only=True``.

A checkpoint ``<out_dir>/checkpoints/ckpt-<step:08d>.pt`` is one ``torch.save`` of plain
tensors, numbers, strings, lists and dicts::

    step, student, teacher, gram_teacher, buffers (DINO/iBOT centres, Gram snapshot step),
    optimizer, loader (one state per rank), config (resolved, dict), backbone_kwargs,
    index_hash, physical_augmentation, world_size

It is written to a temporary name and renamed (or moved, for fsspec URLs such as
``s3://bucket/run/checkpoints``), so a crash never leaves a half-written checkpoint; local
files get the permissions of the process umask, like any other file it writes. A file that
does not load (truncated, damaged, not a checkpoint) raises ``CheckpointError``, and
``load_latest`` then falls back to the next older checkpoint, saying which it skipped. With
FSDP2 the full (unsharded) state is gathered to rank 0 before writing, so a checkpoint can
be resumed with DDP, FSDP2 or one process.

This module is the file side: where checkpoints go (``checkpoint_dir``), writing, listing,
pruning and loading them, full state dicts under FSDP2, and the preemption flag.
``train.run_state`` builds the payload from a run (``save``) and puts it back (``restore``).
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

from train.config import TrainConfig, from_dict

log = logging.getLogger("phieat.train")

CKPT_RE = re.compile(r"ckpt-(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # mkstemp creates the file 0600; give it the mode any other file of this process gets.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_dir(cfg: TrainConfig) -> str:
    """Where a run's checkpoints go: ``ckpt_dir``, else ``<out_dir>/checkpoints``."""
    return cfg.ckpt_dir or cfg.out_dir.rstrip("/") + "/checkpoints"


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


REQUIRED_KEYS = ("step", "student", "teacher", "optimizer", "loader", "config")


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents (``weights_only``: plain tensors and containers, never pickled code).

    Raises ``CheckpointError`` naming the file when it is missing, damaged or not a
    checkpoint of this trainer.
    """
    try:
        with fsspec.open(path, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        # torch's own text suggests weights_only=False, which would run code from the file.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            reason = "it holds Python objects, not only tensors and plain containers"
        raise CheckpointError(
            f"{path} is not a loadable phieat checkpoint (truncated, damaged or another kind of "
            f"file): {type(exc).__name__}: {reason[:200]}"
        ) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a phieat training checkpoint (no {', '.join(missing)})"
        )
    return state


def load_latest(ckpt_dir: str) -> tuple[str, dict] | None:
    """The newest checkpoint in ``ckpt_dir`` that loads, as ``(path, state)``; None when there
    is none. Newer ones that do not load are skipped with a warning; when none loads,
    ``CheckpointError`` lists them."""
    found = list_checkpoints(ckpt_dir)
    skipped = []
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            skipped.append(path)
    if skipped:
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir} loads ({len(skipped)} tried, newest {skipped[0]}); move "
            "them away to start again, or set resume=false"
        )
    return None


def resolved_config_of(checkpoint: str) -> TrainConfig:
    """The config stored inside a checkpoint."""
    return from_dict(load_checkpoint(checkpoint)["config"])


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
