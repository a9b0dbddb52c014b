"""What a run checks and records before its first step: the data, the settings, the resume.

Everything a user can get wrong is checked here, before the model is built.
``prepare_data`` resolves ``data.urls`` (``train.sources.resolve_data``: missing paths and a
dataset without ``index.json`` are one-line errors), reads the index and logs what the run
will read; ``run_warnings`` names settings that train something other than what was
probably meant. ``find_resume`` loads the newest checkpoint that loads and checks it against
these settings (``check_resumed_config``): a change of a key in ``CONFIG_FIXED`` (or of the
dataset, ``data_identity``) is refused unless ``allow_config_change = true``, a change of a
``CONFIG_SCHEDULE`` key is warned about; either is added to the run's ``config_history``.
``record_config`` writes the resolved config beside the outputs without overwriting the
record of what was trained.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phieat import schema
from train.checkpoint import checkpoint_dir, load_latest
from train.config import ConfigError, TrainConfig, to_dict, to_toml
from train.sources import locate_index, read_index, resolve_data, shard_records

log = logging.getLogger("phieat.train")

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


# ----------------------------------------------------------------------------- set-up


@dataclass
class DataPlan:
    """The data a run reads: shard URLs, their ``index.json`` records (by URL) and the
    dataset's identity (``data_identity``, "" without an index)."""

    shards: list[str]
    records: dict[str, dict]
    index_hash: str


def prepare_data(cfg: TrainConfig, world: int) -> DataPlan:
    """Resolve and describe the run's data (one-line errors for what cannot be read), and log
    ``run_warnings``."""
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
    return DataPlan(shards, records, index_hash)


def find_resume(cfg: TrainConfig, index_hash: str) -> tuple[tuple[str, dict] | None, list[dict]]:
    """``(resumed, history)``: the checkpoint to continue as ``(path, state)`` (None with
    ``resume = false`` or when there is none), checked by ``check_resumed_config``; and the
    run's config history, with this start's changes appended."""
    resumed = load_latest(checkpoint_dir(cfg)) if cfg.resume else None
    history: list[dict] = []
    if resumed is not None:
        path, state = resumed
        history = list(state.get("config_history", []))
        changes = check_resumed_config(cfg, path, state, index_hash)
        if changes:
            history.append({"step": int(state["step"]), "changes": changes})
    return resumed, history
