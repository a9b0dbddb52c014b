"""Strict, typed trainer configuration: dataclasses loaded from TOML plus ``key=value`` overrides.

A config is a named file in ``train/configs/`` (``tiny-cpu``, ``vits14``, ``vitb14``,
``vitl14``) or a path to a TOML file, followed by dotted overrides::

    cfg = load_config("tiny-cpu", ["data.urls=/data/ds/shard-{000000..000009}.tar", "optim.steps=200"])

Every key is checked: an unknown or mistyped key, or a value of the wrong type, raises
``ConfigError`` naming the key (and the file it came from). The resolved config is a plain
dict (``to_dict``) that is saved beside the outputs and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not match the schema; the message names the key."""


@dataclass
class DataConfig:
    # Shard sources: a dataset folder (its latest.json is followed), a version folder, an
    # index.json, or shards one by one: local paths, brace patterns, http(s)://, pipe:, or
    # fsspec URLs (s3://...). Several sources may be given as a list or joined with "::".
    urls: list[str] = field(default_factory=list)
    # index.json of the dataset version; "auto": the named folder's (a folder without one is
    # refused), else beside the first shard if there is one; "" trains without it.
    index: str = "auto"
    # False: photometric DINO baseline, both "views" are augmentations of one render.
    physical_augmentation: bool = True
    # What L_contrast's positives (and KoLeo's exclusions) group by in a physical run:
    # "material" = every view of a material in the batch (the material labels); "sample" =
    # only the views of one sample, as in a label-free method (the ablation that separates
    # what physical views give from what material labels give). The photometric baseline
    # always groups by render.
    labels: str = "material"
    # Keep each hard-negative group (a dataset rendered with [hard_negatives] group_size = k:
    # k materials on the identical mesh, light and camera) together through the shuffle, so
    # L_contrast must tell them apart when shape and light are no help.
    hard_negative_batches: bool = False
    batch_size: int = 32  # per rank
    num_workers: int = 2
    shuffle_shards: bool = True
    shuffle_buffer: int = 256
    # Shards are read in order within a worker and sampled in a fresh permutation every
    # epoch; "resampled" draws shards with replacement instead (large, uneven datasets).
    resampled: bool = False
    # "warn" counts and skips corrupt samples/shards; "raise" stops at the first one.
    error_policy: str = "warn"
    max_errors: int = 1000  # abort when a worker has skipped more samples + shards than this
    # Abort when more than this fraction of the samples, or of the shards, a worker read in
    # its epochs so far were skipped as unreadable (checked at the end of every epoch).
    max_skipped_fraction: float = 0.1
    # Check each shard's sha256 against index.json as it is streamed (reads a whole shard into
    # memory first); a mismatch skips the shard. Catches bytes that still decode.
    verify_shards: bool = False
    validate_samples: bool = True


@dataclass
class CropConfig:
    global_size: int = 224
    local_size: int = 98
    global_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    global_per_view: int = 1  # global crops per chosen view (2 views -> 2 global crops)
    local_per_view: int = 4
    # Crops keep at least this fraction of object pixels (object mask), when a mask exists.
    min_object_fraction: float = 0.5
    crop_tries: int = 10
    hflip: bool = True
    # Mild photometric jitter: colour is part of a material (no hue shift, no grayscale).
    jitter_prob: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.1
    grayscale_prob: float = 0.0
    blur_prob_global: list[float] = field(default_factory=lambda: [1.0, 0.1])
    blur_prob_local: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # at 224 px
    solarize_prob: float = 0.2  # second global crop only, as DINOv2
    # iBOT block masks on student global crops.
    mask_prob: float = 0.5
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    # Run the photometric part on the training device (batched) instead of the workers.
    on_device: bool = False
    # With on_device: the workers also leave JPEG decoding and the crops' resampling to the
    # training device (they still read the shards, decode masks and draw every random choice,
    # so the batches match the worker path's); non-JPEG views are decoded in the workers.
    decode_on_device: bool = False


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch14_dinov2"  # any timm ViT / EVA (DINOv3) name
    patch_size: int = 0  # 0: the architecture's default
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    reg_tokens: int = -1  # -1: the architecture's default
    drop_path_rate: float = 0.0
    layerscale: float = 1.0e-5
    # Embed patches with log2(patch) stride-2 3x3 convolutions instead of one linear map
    # (train/models/stem.py). A model.pretrained checkpoint must have the same embedding
    # (DINOv2/DINOv3 ones have the linear map: set conv_stem = false to fine-tune them).
    conv_stem: bool = False
    # Local DINOv2/DINOv3/timm backbone checkpoint to start from ("" = from scratch).
    pretrained: str = ""
    head_prototypes: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_layers: int = 3
    ibot_separate_head: bool = False
    contrast_dim: int = 128
    contrast_hidden: int = 512


@dataclass
class LossConfig:
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    gram_weight: float = 0.0
    contrast_weight: float = 0.5
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 1000
    centering: str = "centering"  # "centering" or "sinkhorn"
    center_momentum: float = 0.9
    sinkhorn_iters: int = 3
    ibot_form: str = "prototypes"  # "prototypes" (DINOv2 CE) or "regression"
    contrast_temp: float = 0.1
    contrast_crops: str = "global"  # "global" or "all"
    # From scratch the Gram teacher is a snapshot of the EMA teacher taken at this step and
    # refreshed every gram_refresh_steps (0: never); with model.pretrained it is the loaded
    # backbone from step 0.
    gram_start_step: int = 1000
    gram_refresh_steps: int = 0


@dataclass
class OptimConfig:
    steps: int = 1000
    base_lr: float = 0.004  # per 1024 images
    lr_scaling: str = "sqrt"  # "sqrt", "linear" or "none"
    min_lr: float = 1.0e-6
    warmup_steps: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    momentum_teacher: float = 0.992
    momentum_teacher_end: float = 1.0
    freeze_last_layer_steps: int = 100
    layer_decay: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    fused: bool = True


@dataclass
class TrainConfig:
    out_dir: str = "out/train"  # local folder: config.toml, metrics.jsonl, tensorboard/, export/
    ckpt_dir: str = ""  # checkpoints; "" = <out_dir>/checkpoints; may be an fsspec URL (s3://...)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp32"
    compile: bool = False
    parallel: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard)
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    resume: bool = True
    # Stop after this step (0: run to optim.steps) and checkpoint, as a preemption would.
    stop_at_step: int = 0
    # Wall-clock budget in minutes (0: none): stop, checkpoint and export when it is spent,
    # even if the schedule has not finished (the export records the step reached).
    max_minutes: float = 0.0
    progress: bool = True
    tensorboard: bool = True
    export: bool = True
    threads: int = 0  # torch intra-op threads on CPU (0: leave torch's default)
    # Resume a checkpoint even though the objective or the data changed (train.preflight.CONFIG_FIXED).
    allow_config_change: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


CHOICES = {
    "data.labels": ("material", "sample"),
    "data.error_policy": ("warn", "raise"),
    "loss.centering": ("centering", "sinkhorn"),
    "loss.ibot_form": ("prototypes", "regression"),
    "loss.contrast_crops": ("global", "all"),
    "optim.lr_scaling": ("sqrt", "linear", "none"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "bf16", "fp32"),
    "parallel": ("ddp", "fsdp"),
}


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _coerce(value: Any, kind: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``kind``; ints are accepted where floats are meant."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: {key} has an unsupported type {kind}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if kind is not bool and isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(
            f"{where}: {key} must be {_type_name(kind)}, got {type(value).__name__} {value!r}"
        )
    return value


def _apply(obj: Any, values: dict, prefix: str, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            close = sorted(n for n in names if n[:3] == name[:3])
            hint = f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a table of settings, got {value!r}")
            _apply(getattr(obj, name), value, f"{key}.", where)
            continue
        if key == "data.urls" and isinstance(value, str):
            value = [u for u in value.split("::") if u]
        setattr(obj, name, _coerce(value, kind, key, where))


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.steps=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as a path or URL
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _check(cfg: TrainConfig) -> None:
    flat = to_dict(cfg)
    for key, allowed in CHOICES.items():
        node: Any = flat
        for part in key.split("."):
            node = node[part]
        if node not in allowed:
            raise ConfigError(f"{key} = {node!r} is not one of {list(allowed)}")
    for key in ("crops.global_scale", "crops.local_scale", "crops.mask_ratio", "crops.blur_sigma"):
        section, name = key.split(".")
        pair = getattr(getattr(cfg, section), name)
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"{key} must be [low, high] with low <= high, got {pair}")
    if len(cfg.crops.blur_prob_global) != 2:
        raise ConfigError("crops.blur_prob_global must list two probabilities (global crop 1, 2)")
    if cfg.data.batch_size < 1:
        raise ConfigError("data.batch_size must be >= 1")
    if cfg.crops.global_per_view < 1:
        raise ConfigError("crops.global_per_view must be >= 1")
    if cfg.crops.decode_on_device and not cfg.crops.on_device:
        raise ConfigError("crops.decode_on_device needs crops.on_device = true")
    if cfg.optim.steps < 1:
        raise ConfigError("optim.steps must be >= 1")
    if not 0.0 <= cfg.data.max_skipped_fraction <= 1.0:
        raise ConfigError(
            f"data.max_skipped_fraction must be in [0, 1], got {cfg.data.max_skipped_fraction}"
        )
    if cfg.loss.gram_weight > 0 and not cfg.model.pretrained and cfg.loss.gram_start_step <= 0:
        raise ConfigError(
            f"loss.gram_start_step = {cfg.loss.gram_start_step} with loss.gram_weight > 0 and no "
            "model.pretrained: the Gram teacher would be a copy of the randomly initialised "
            "network, anchoring the student to noise. Set loss.gram_start_step to the step from "
            "which the EMA teacher is worth anchoring to (e.g. 1000), or set "
            "model.pretrained=<backbone checkpoint>, or loss.gram_weight=0"
        )


def resolve_config_path(name: str) -> Path:
    """``tiny-cpu`` -> ``train/configs/tiny-cpu.toml``; a path is returned as is."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = CONFIG_DIR / f"{name}.toml"
    if not candidate.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"no config named {name!r}; known: {known} (or pass a .toml path)")
    return candidate


def load_config(
    name: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Build a ``TrainConfig`` from defaults, an optional TOML config and ``key=value`` overrides."""
    cfg = TrainConfig()
    if name:
        path = resolve_config_path(name)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        _apply(cfg, values, "", str(path))
    for text in overrides:
        key, value = _parse_override(text)
        _apply(cfg, _nest(key, value), "", f"override {text!r}")
    _check(cfg)
    return cfg


def from_dict(values: dict) -> TrainConfig:
    """Rebuild a config from ``to_dict`` output (e.g. the copy inside a checkpoint)."""
    cfg = TrainConfig()
    _apply(cfg, values, "", "saved config")
    _check(cfg)
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML text (scalars first, then one table per section)."""

    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return repr(value)

    flat = to_dict(cfg)
    lines = [f"{k} = {fmt(v)}" for k, v in flat.items() if not isinstance(v, dict)]
    for section, values in flat.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {fmt(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"
