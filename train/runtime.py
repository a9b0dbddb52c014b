"""Process and device plumbing of a training run: what ``train.train.setup`` and the step use.

``setup_distributed`` reads torchrun's environment (rank, world, local device) and starts the
process group; ``setup_logging`` gives the ``phieat.train`` logger its handler (rank 0 at
INFO, the others WARNING only); ``apply_parallel`` wraps the student in DDP or shards student,
teacher and Gram teacher with FSDP2; ``autocast`` is bf16 on CUDA (``precision``). Per step,
``to_device`` moves a host batch to the training device (finishing a ``decode_on_device``
batch there) and ``batch_digest`` fingerprints a host batch for ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os

import torch
import torch.distributed as dist
from torch import nn

from train.augment import photometric
from train.config import CropConfig, TrainConfig
from train.meta_arch import MetaArch
from train.samples import on_device

log = logging.getLogger("phieat.train")


def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """``(rank, world, device)`` from torchrun's environment; starts the process group (NCCL on
    CUDA, else gloo) when there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device = 'cuda' but no CUDA device is visible; use device=auto or device=cpu"
        )
    device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return rank, world, device


def setup_logging(rank: int) -> None:
    """One handler on the ``phieat.train`` logger; rank 0 logs INFO, the other ranks warnings only."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
        )
        log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def apply_parallel(cfg: TrainConfig, meta: MetaArch, device: torch.device, world: int) -> nn.Module:
    """Wrap the student for DDP, or shard student/teacher/Gram teacher with FSDP2; returns what to call."""
    if world == 1:
        return meta.student
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in (meta.student, meta.teacher, meta.gram_teacher):
            if module is None:
                continue
            blocks = module.backbone.blocks if hasattr(module, "backbone") else module.blocks
            for block in blocks:
                fully_shard(block)
            fully_shard(module)
        return meta.student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        meta.student, device_ids=[device.index] if device.type == "cuda" else None
    )


def to_device(
    batch: dict, device: torch.device, on_device_aug: bool, crops: CropConfig | None = None
) -> dict:
    """A host batch on ``device``: a ``decode_on_device`` batch finished there (``on_device``),
    else its tensors moved, and with ``on_device_aug`` (``crops.on_device``) its photometric part
    applied there."""
    if "images" in batch:  # crops.decode_on_device: decode, crops and colour on the device
        return on_device(batch, device, crops)
    out = dict(batch)
    # Photometric params stay on the host: photometric() reads them there to skip work.
    for name in ("global", "local", "masks", "labels"):
        if out.get(name) is not None:
            out[name] = out[name].to(device, non_blocking=True)
    if on_device_aug:
        out["global"] = photometric(out.pop("global"), out.pop("global_params"))
        if out.get("local") is not None:
            out["local"] = photometric(out.pop("local"), out.pop("local_params"))
    return out


def batch_digest(batch: dict) -> str:
    """A short hash of a host batch (its keys and first crops), logged as ``batch_digest``: equal
    digests show that two runs (or a run and its resume) saw the same batches."""
    h = hashlib.blake2b(digest_size=8)
    h.update(",".join(batch["keys"]).encode())
    if "images" in batch:  # decode_on_device: the crops are a function of boxes, flips, params
        for name in ("global_boxes", "global_flip", "global_params"):
            h.update(batch[name].contiguous().numpy().tobytes())
        return h.hexdigest()
    h.update(batch["global"].contiguous().numpy().tobytes())
    return h.hexdigest()


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast with ``precision = "bf16"``, or ``"auto"`` on CUDA; else a null context."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )
