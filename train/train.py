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

Before the model is built, ``data.urls`` is resolved (``train.data.resolve_data``: missing
paths and a dataset without ``index.json`` are one-line errors) and the checkpoint to resume is
loaded. A resumed run must train the same objective on the same data: a change of a key in
``CONFIG_FIXED`` (or of the dataset's ``index.json``) is refused unless
``allow_config_change = true``; a change of a ``CONFIG_SCHEDULE`` key is warned about. Either
is recorded in the checkpoints and the export (``config_history``), and ``config.toml`` keeps
the settings the run started with (the new ones go to ``config.resume-<step>.toml``).
Warnings name a dataset smaller than one batch and a run that never leaves its warm-up; a
``max_minutes`` stop is logged with the step reached. Skipped unreadable samples and shards
(``train.data``) are logged as ``skipped_samples`` / ``skipped_shards``.
The EMA teacher backbone is exported to ``<out_dir>/export/backbone.pt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from phieat import schema
from train.checkpoint import (
    PreemptionFlag,
    atomic_torch_save,
    checkpoint_path,
    load_checkpoint,
    load_latest,
    load_module_state,
    load_optimizer_state,
    module_state,
    optimizer_state,
    prune_checkpoints,
)
from train.config import ConfigError, CropConfig, TrainConfig, from_dict, to_dict, to_toml
from train.data import Loader, locate_index, read_index, resolve_data, shard_records
from train.diagnostics import collapse_warning
from train.meta_arch import MetaArch, backbone_kwargs
from train.models import export_backbone

log = logging.getLogger("phieat.train")
LOSS_NAMES = ("dino", "ibot", "koleo", "gram", "contrast", "total")

# Keys (or sections, ending in ".") that define what a run learns: a resumed run may not change
# them without allow_config_change = true. The data itself is compared by ``data_identity``
# (its version and shard checksums; without an index, by data.urls).
CONFIG_FIXED = (
    "data.physical_augmentation",
    "data.labels",
    "data.hard_negative_batches",
    "crops.",
    "model.",
    "loss.",
)
# Keys whose change a resumed run accepts with a warning (checked before CONFIG_FIXED): the
# schedules are recomputed from the new values, and the data stream order changes.
CONFIG_SCHEDULE = (
    "optim.",
    "loss.warmup_teacher_temp_steps",
    "seed",
    "data.batch_size",
    "data.shuffle_shards",
    "data.shuffle_buffer",
    "data.resampled",
)
# A resumed run takes its weights (Gram teacher included) from the checkpoint, not from here.
CONFIG_IGNORED = ("model.pretrained",)


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
    ratio = cfg.data.batch_size * world / 1024.0
    scale = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[cfg.optim.lr_scaling]
    return cfg.optim.base_lr * scale


def schedules(cfg: TrainConfig, step: int, world: int) -> dict[str, float]:
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
    groups = param_groups(student, cfg.optim.layer_decay)
    kwargs: dict[str, Any] = {"lr": 0.0, "betas": tuple(cfg.optim.betas), "weight_decay": 0.0}
    if cfg.optim.fused and device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


# ----------------------------------------------------------------------------- runtime


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
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


def _setup_logging(rank: int) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
        )
        log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _apply_parallel(
    cfg: TrainConfig, meta: MetaArch, device: torch.device, world: int
) -> nn.Module:
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


class Metrics:
    """Rank-0 JSONL + TensorBoard writer."""

    def __init__(self, out_dir: Path, tensorboard: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _to_device(
    batch: dict, device: torch.device, on_device_aug: bool, crops: CropConfig | None = None
) -> dict:
    from train.augment import photometric

    if "images" in batch:  # crops.decode_on_device: decode, crops and colour on the device
        from train.data import on_device

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


def _digest(batch: dict) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(",".join(batch["keys"]).encode())
    if "images" in batch:  # decode_on_device: the crops are a function of boxes, flips, params
        for name in ("global_boxes", "global_flip", "global_params"):
            h.update(batch[name].contiguous().numpy().tobytes())
        return h.hexdigest()
    h.update(batch["global"].contiguous().numpy().tobytes())
    return h.hexdigest()


def _save(
    cfg: TrainConfig,
    meta: MetaArch,
    optimizer,
    loader: Loader,
    step: int,
    fsdp: bool,
    rank: int,
    world: int,
    index_hash: str,
    history: list[dict],
) -> str | None:
    """Gather the full state (collective) and let rank 0 write it atomically."""
    loader_states: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(loader_states, loader.state_dict())
    else:
        loader_states = [loader.state_dict()]
    payload = {
        "step": step,
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
        "optimizer": optimizer_state(meta.student, optimizer, fsdp),
        "loader": loader_states,
        "config": to_dict(cfg),
        "backbone_kwargs": backbone_kwargs(cfg),
        "index_hash": index_hash,
        "physical_augmentation": cfg.data.physical_augmentation,
        "world_size": world,
        "config_history": history,
    }
    path = None
    if rank == 0:
        ckpt_dir = _ckpt_dir(cfg)
        path = checkpoint_path(ckpt_dir, step)
        atomic_torch_save(payload, path)
        prune_checkpoints(ckpt_dir, cfg.keep_last)
        log.info("checkpoint %s", path)
    if world > 1:
        dist.barrier()
    return path


def _ckpt_dir(cfg: TrainConfig) -> str:
    return cfg.ckpt_dir or cfg.out_dir.rstrip("/") + "/checkpoints"


def _resume(cfg, meta, optimizer, loader, fsdp, rank, world, path, state) -> int:
    try:
        load_module_state(meta.student, state["student"], fsdp)
        load_module_state(meta.teacher, state["teacher"], fsdp)
        if meta.gram_teacher is not None and state["gram_teacher"]:
            load_module_state(meta.gram_teacher, state["gram_teacher"], fsdp)
        meta.dino_loss.center.copy_(state["buffers"]["dino_center"])
        meta.ibot_loss.center.copy_(state["buffers"]["ibot_center"])
        meta.gram_snapshot_step.fill_(int(state["buffers"]["gram_snapshot_step"]))
        load_optimizer_state(meta.student, optimizer, state["optimizer"], fsdp)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"{path} cannot be continued with these settings: the model it holds does not match "
            f"({first} {detail[len(first) :]}). Train into a new out_dir or set resume=false"
        ) from None
    if len(state["loader"]) == world:
        loader.load_state_dict(state["loader"][rank])
    else:
        log.warning(
            "%s was written with %d ranks, now %d: the data stream restarts at its epoch",
            path,
            len(state["loader"]),
            world,
        )
        loader.streams = {}
    log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


# ----------------------------------------------------------------------------- run record


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def config_changes(
    saved: dict, cfg: TrainConfig, saved_index_hash: str, index_hash: str
) -> tuple[dict[str, list], dict[str, list]]:
    """``(fixed, schedule)``: ``{key: [saved, now]}`` of the keys a resumed run changed."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    fixed: dict[str, list] = {}
    schedule: dict[str, list] = {}
    for key in sorted(old.keys() & new.keys()):
        if old[key] == new[key] or _matches(key, CONFIG_IGNORED):
            continue
        if _matches(key, CONFIG_SCHEDULE):
            schedule[key] = [old[key], new[key]]
        elif _matches(key, CONFIG_FIXED):
            fixed[key] = [old[key], new[key]]
    if saved_index_hash and index_hash:
        if saved_index_hash != index_hash:
            fixed["data (version and shard checksums)"] = [saved_index_hash, index_hash]
    elif old.get("data.urls") != new.get("data.urls"):
        fixed["data.urls"] = [old.get("data.urls"), new.get("data.urls")]
    return fixed, schedule


def _describe(changes: dict[str, list]) -> str:
    return ", ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in changes.items())


def data_identity(index: dict | None) -> str:
    """What a dataset *is*, for the resume check: its version and every shard's name,
    sha256 and sample count. Not the whole ``index.json``: a build that resumes rewrites it
    (its ``created`` time) without changing one byte of data."""
    if not index:
        return ""
    shards = [[s.get("name"), s.get("sha256"), s.get("samples")] for s in index.get("shards", [])]
    return schema.hash_obj({"version": index.get("version"), "shards": shards})


def check_resumed_config(
    cfg: TrainConfig, path: str, state: dict, index_hash: str
) -> dict[str, list]:
    """Refuse a resume that changes the objective or the data (unless ``allow_config_change``);
    warn about schedule changes. Returns every change, to be recorded."""
    fixed, schedule = config_changes(
        state.get("config", {}), cfg, state.get("index_hash", ""), index_hash
    )
    step = int(state["step"])
    if fixed and not cfg.allow_config_change:
        raise ConfigError(
            f"{path} (step {step}) was trained with another objective or data: {_describe(fixed)}. "
            f"Train into a new out_dir, set resume=false to start over, or pass "
            f"--allow-config-change (allow_config_change=true) to continue it under the new settings"
        )
    if fixed:
        log.warning(
            "allow_config_change: continuing %s (step %d) with %s", path, step, _describe(fixed)
        )
    if schedule:
        log.warning(
            "resuming %s at step %d with changed settings: %s; the lr, weight-decay, "
            "teacher-momentum and temperature schedules follow the new values from here",
            path,
            step,
            _describe(schedule),
        )
    return {**fixed, **schedule}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def record_config(out_dir: Path, cfg: TrainConfig, step: int) -> Path:
    """Write the resolved config without overwriting the record of what was trained:
    ``config.toml`` holds the settings the run started with; a resumed run with other
    settings writes ``config.resume-<step>.toml``; a new run from step 0 moves an older,
    different ``config.toml`` aside to ``config.before-<UTC time>.toml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = to_toml(cfg)
    main_path = out_dir / "config.toml"
    if not main_path.exists():
        _write_text(main_path, text)
        return main_path
    if main_path.read_text(encoding="utf-8") == text:
        return main_path
    if step > 0:
        path = out_dir / f"config.resume-{step:08d}.toml"
        _write_text(path, text)
        log.info(
            "config.toml keeps the settings this run started with; from step %d: %s", step, path
        )
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    old = out_dir / f"config.before-{stamp}.toml"
    os.replace(main_path, old)
    log.warning("%s holds another run's config: kept as %s", main_path, old.name)
    _write_text(main_path, text)
    return main_path


def run_warnings(cfg: TrainConfig, world: int, samples: int | None) -> list[str]:
    """Settings that train something other than what was probably meant."""
    out = []
    batch = cfg.data.batch_size * world
    if samples is not None and samples < batch:
        out.append(
            f"the dataset holds {samples} samples, fewer than one batch ({batch} = "
            f"data.batch_size {cfg.data.batch_size} x {world} rank(s)): every batch repeats "
            "samples, which L_contrast then treats as other crops of the same render; lower "
            "data.batch_size or render more materials"
        )
    steps = cfg.optim.steps
    if steps <= cfg.optim.warmup_steps:
        out.append(
            f"optim.steps={steps} ends within the learning-rate warm-up (optim.warmup_steps="
            f"{cfg.optim.warmup_steps}): the run is all warm-up and never reaches the peak lr; "
            "raise optim.steps or lower optim.warmup_steps"
        )
    if (
        steps <= cfg.loss.warmup_teacher_temp_steps
        and cfg.loss.warmup_teacher_temp != cfg.loss.teacher_temp
    ):
        out.append(
            f"optim.steps={steps} ends within the teacher-temperature warm-up "
            f"(loss.warmup_teacher_temp_steps={cfg.loss.warmup_teacher_temp_steps})"
        )
    if steps <= cfg.optim.freeze_last_layer_steps:
        out.append(
            f"optim.steps={steps} <= optim.freeze_last_layer_steps="
            f"{cfg.optim.freeze_last_layer_steps}: the prototype layer never trains"
        )
    return out


# ----------------------------------------------------------------------------- main


def main(cfg: TrainConfig) -> dict:
    """Train as configured; returns a summary (final step, last losses, throughput, export path)."""
    rank, world, device = _setup_distributed(cfg)
    _setup_logging(rank)
    if cfg.threads > 0 and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    fsdp = world > 1 and cfg.parallel == "fsdp"
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is a file, not a folder")
    # Everything a user can get wrong is checked before the model is built.
    source = resolve_data(cfg.data)
    shards = source.shards
    index = read_index(cfg.data, shards, source.index_url)
    index_hash = data_identity(index)
    records = shard_records(index, shards, locate_index(cfg.data, shards, source.index_url))
    if cfg.data.verify_shards and not records:
        log.warning(
            "data.verify_shards: no index.json records the shards' sha256; nothing to verify"
        )
    samples = None
    if index:
        listed = {u.rsplit("/", 1)[-1] for u in shards}
        samples = sum(s["samples"] for s in index["shards"] if s["name"] in listed)
        log.info(
            "dataset %s %s: %d shards, %d samples",
            index["dataset"],
            index["version"],
            len(shards),
            samples,
        )
        if len(records) < len(shards):
            samples = None  # shards from elsewhere: the size is not known
    else:
        log.info("%d shard(s) named explicitly, no index.json beside them", len(shards))
    for warning in run_warnings(cfg, world, samples):
        log.warning(warning)
    resumed = load_latest(_ckpt_dir(cfg)) if cfg.resume else None
    history: list[dict] = []
    start_step, state = 0, None
    if resumed is not None:
        path, state = resumed
        start_step = int(state["step"])
        history = list(state.get("config_history", []))
        changes = check_resumed_config(cfg, path, state, index_hash)
        if changes:
            history.append({"step": start_step, "changes": changes})
    if cfg.max_minutes > 0:
        log.info(
            "max_minutes=%g: the run stops, checkpoints and exports when that wall-clock time is "
            "spent, even before optim.steps=%d (max_minutes=0 lifts the cap)",
            cfg.max_minutes,
            cfg.optim.steps,
        )

    torch.manual_seed(cfg.seed)
    meta = MetaArch(cfg).to(device)
    student_call = _apply_parallel(cfg, meta, device, world)
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
        shards, cfg.data, cfg.crops, patch, cfg.seed, rank, world,
        pin_memory=device.type == "cuda", records=records,
    )  # fmt: skip
    step = 0
    if resumed is not None:
        step = _resume(cfg, meta, optimizer, loader, fsdp, rank, world, *resumed)
        resumed = state = None  # the model holds it now
    if rank == 0:
        record_config(out_dir, cfg, start_step)
    if cfg.compile:
        student_call = torch.compile(student_call)
    n_params = sum(p.numel() for p in meta.student.backbone.parameters())
    log.info(
        "%s backbone: %.2fM params; %d rank(s) on %s; global batch %d",
        cfg.model.arch,
        n_params / 1e6,
        world,
        device,
        cfg.data.batch_size * world,
    )

    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )
    metrics = Metrics(out_dir, cfg.tensorboard, rank == 0)
    preempt = PreemptionFlag().install()
    stop_at = cfg.stop_at_step or cfg.optim.steps
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.optim.steps, initial=step, desc="train", dynamic_ncols=True)
    images_per_step = cfg.data.batch_size * world
    window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
    last: dict[str, float] = {}
    export_path = None
    data_iter = iter(loader)
    run_start = time.perf_counter()
    time_up = False
    # Collapse warnings (train.diagnostics) start after the lr and teacher-temperature warm-ups.
    warm_steps = max(cfg.optim.warmup_steps, cfg.loss.warmup_teacher_temp_steps)
    last_warned = -(10**9)
    try:
        while step < stop_at:
            t0 = time.perf_counter()
            batch = next(data_iter)
            window_wait += time.perf_counter() - t0
            digest = (
                _digest(batch)
                if (step + 1) % cfg.log_every == 0
                and batch.get("global_boxes", batch.get("global")).device.type == "cpu"
                else None
            )
            batch = _to_device(batch, device, cfg.crops.on_device, cfg.crops)
            sched = schedules(cfg, step, world)
            for group in optimizer.param_groups:
                group["lr"] = sched["lr"] * group["lr_scale"]
                group["weight_decay"] = sched["wd"] * group["wd_scale"]
            # Model randomness (drop path) is a function of (seed, step, rank): resume is exact.
            torch.manual_seed((cfg.seed * 1_000_003 + step * 7919 + rank) % (2**63))
            meta.maybe_refresh_gram(step)
            with autocast:
                losses = meta(batch, sched["teacher_temp"], step, student_call)
            names = [n for n in LOSS_NAMES if n in losses]
            out_of_time = (
                cfg.max_minutes > 0 and time.perf_counter() - run_start > cfg.max_minutes * 60
            )
            flags = [
                float(preempt.requested),
                float(out_of_time),
                float(loader.skipped_samples),
                float(loader.skipped_shards),
            ]
            # One all-reduce per step: the loss terms (for logging and the finite check, so
            # every rank stops together), the stop flags and the skipped-data counts.
            reduced = torch.cat(
                [
                    torch.stack([losses[n].detach().float() for n in names]),
                    torch.tensor(flags, device=device),
                ]
            )
            if world > 1:
                dist.all_reduce(reduced)
            values = (reduced[:-4] / world).tolist()
            stop_requested = reduced[-4].item() > 0
            time_up = reduced[-3].item() > 0
            skipped_samples, skipped_shards = int(reduced[-2].item()), int(reduced[-1].item())
            if not math.isfinite(values[-1]):
                terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values, strict=True))
                raise FloatingPointError(
                    f"non-finite loss at step {step} ({terms}); nothing was updated. Lower optim.base_lr, "
                    f"raise optim.warmup_steps, or check the data; the last checkpoint is in {_ckpt_dir(cfg)}"
                )
            losses["total"].backward()
            if step < cfg.optim.freeze_last_layer_steps:
                for group in optimizer.param_groups:
                    if group["is_last_layer"]:
                        for p in group["params"]:
                            p.grad = None
            grad_norm = float("nan")
            if cfg.optim.clip_grad > 0:
                norm = torch.nn.utils.clip_grad_norm_(
                    meta.student.parameters(), cfg.optim.clip_grad
                )
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meta.update_teacher(sched["momentum"])
            step += 1
            window_steps += 1
            last = {f"loss/{n}": v for n, v in zip(names, values, strict=True)}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values[-1]:.3f}")
            if step % cfg.log_every == 0 or step == stop_at or stop_requested or time_up:
                elapsed = time.perf_counter() - window_start
                step_stats = {**meta.last_stats, **meta.collapse_stats()}
                record: dict[str, Any] = {
                    **last,
                    **sched,
                    "grad_norm": grad_norm,
                    "images_per_s": images_per_step * window_steps / max(elapsed, 1e-9),
                    "step_time_s": elapsed / max(window_steps, 1),
                    "data_wait": window_wait / max(elapsed, 1e-9),
                    "epoch": loader.epoch,
                    "skipped_samples": skipped_samples,
                    "skipped_shards": skipped_shards,
                    "data_errors": skipped_samples + skipped_shards,
                    **{f"stats/{k}": float(v) for k, v in step_stats.items()},
                }
                if device.type == "cuda":
                    record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                if digest is not None:
                    record["batch_digest"] = digest
                metrics.write(step, record)
                warning = collapse_warning(step_stats, step, warm_steps)
                if warning and step - last_warned >= 10 * cfg.log_every:
                    log.warning(warning)
                    last_warned = step
                last.update({k: v for k, v in record.items() if isinstance(v, (int, float))})
                window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
            if stop_requested:
                log.warning("stopping at step %d on request (SIGTERM)", step)
                break
            if time_up:
                log.warning(
                    "stopped by max_minutes=%g at step %d of optim.steps=%d, before the schedule "
                    "ended: checkpointing and exporting (the export records the step); run again "
                    "to continue, or set max_minutes=0 to run every step",
                    cfg.max_minutes,
                    step,
                    cfg.optim.steps,
                )
                break
            if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0 and step < stop_at:
                _save(cfg, meta, optimizer, loader, step, fsdp, rank, world, index_hash, history)
        _save(cfg, meta, optimizer, loader, step, fsdp, rank, world, index_hash, history)
        if cfg.export and (step >= cfg.optim.steps or time_up):
            teacher_backbone = module_state(meta.teacher.backbone, fsdp)
            if rank == 0:
                export_path = str(out_dir / "export" / "backbone.pt")
                export_backbone(
                    teacher_backbone, backbone_kwargs(cfg), export_path,
                    {
                        "step": step,
                        "config": to_dict(cfg),
                        "physical_augmentation": cfg.data.physical_augmentation,
                        "time_limited": step < cfg.optim.steps,
                        "config_history": history,
                    },
                )  # fmt: skip
                log.info("exported teacher backbone to %s", export_path)
    finally:
        preempt.uninstall()
        metrics.close()
        if bar is not None:
            bar.close()
    if "loss/total" in last:
        log.info(
            "step %d of %d: loss %.4f, %.1f images/s; skipped %d samples, %d shards",
            step,
            cfg.optim.steps,
            last["loss/total"],
            last.get("images_per_s", 0.0),
            int(last.get("skipped_samples", 0)),
            int(last.get("skipped_shards", 0)),
        )
    return {
        "step": step,
        "last": last,
        "export": export_path,
        "out_dir": str(out_dir),
        "rank": rank,
        "world": world,
    }


def resolved_config_of(checkpoint: str) -> TrainConfig:
    """The config stored inside a checkpoint."""
    return from_dict(load_checkpoint(checkpoint)["config"])
