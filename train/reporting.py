"""What a training run reports: ``metrics.jsonl`` and TensorBoard (rank 0), the progress bar,
collapse warnings and the closing summary line.

``StepLog`` follows the loop in ``train.train.main``: ``waited`` adds the time spent waiting
for data, ``digest`` fingerprints a host batch that the coming step will log, and ``log_step``
updates the bar and, every ``log_every`` steps (and at the last one), writes one record
through ``Metrics``: every loss term, the schedules, grad norm, images/s, step time, the
data-wait fraction, the epoch, the skipped data, the collapse statistics
(``train.diagnostics``) and on CUDA the peak GPU memory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from train.diagnostics import collapse_warning
from train.run_state import Run, StepResult
from train.runtime import batch_digest

log = logging.getLogger("phieat.train")


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


class StepLog:
    """The loop's log: a timing window since the last record, the progress bar (rank 0, with
    ``progress``), and ``last``, the latest values (what ``main`` returns)."""

    def __init__(self, run: Run, stop_at: int) -> None:
        cfg = run.cfg
        self.log_every, self.stop_at = cfg.log_every, stop_at
        self.metrics = Metrics(run.out_dir, cfg.tensorboard, run.rank == 0)
        self.bar = None
        if run.rank == 0 and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=cfg.optim.steps, initial=run.step, desc="train", dynamic_ncols=True
            )
        self.images_per_step = cfg.data.batch_size * run.world
        self.window_start, self.window_wait, self.window_steps = time.perf_counter(), 0.0, 0
        self.last: dict[str, float] = {}
        # Collapse warnings (train.diagnostics) start after the lr and teacher-temperature warm-ups.
        self.warm_steps = max(cfg.optim.warmup_steps, cfg.loss.warmup_teacher_temp_steps)
        self.last_warned = -(10**9)

    def waited(self, seconds: float) -> None:
        """Time the loop spent waiting for the next batch."""
        self.window_wait += seconds

    def digest(self, run: Run, batch: dict) -> str | None:
        """``batch_digest`` of a host batch when the coming step writes a record, else None."""
        if (run.step + 1) % self.log_every == 0 and batch.get(
            "global_boxes", batch.get("global")
        ).device.type == "cpu":
            return batch_digest(batch)
        return None

    def log_step(self, run: Run, result: StepResult, digest: str | None) -> None:
        """After step ``run.step``: the bar, and on a logged step the record and collapse check."""
        step = run.step
        self.window_steps += 1
        self.last = {f"loss/{n}": v for n, v in result.losses.items()}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{result.losses['total']:.3f}")
        if not (
            step % self.log_every == 0
            or step == self.stop_at
            or result.stop_requested
            or result.time_up
        ):
            return
        elapsed = time.perf_counter() - self.window_start
        meta, skipped = run.meta, result.skipped_samples + result.skipped_shards
        step_stats = {**meta.last_stats, **meta.collapse_stats()}
        record: dict[str, Any] = {
            **self.last,
            **result.sched,
            "grad_norm": result.grad_norm,
            "images_per_s": self.images_per_step * self.window_steps / max(elapsed, 1e-9),
            "step_time_s": elapsed / max(self.window_steps, 1),
            "data_wait": self.window_wait / max(elapsed, 1e-9),
            "epoch": run.loader.epoch,
            "skipped_samples": result.skipped_samples,
            "skipped_shards": result.skipped_shards,
            "data_errors": skipped,
            **{f"stats/{k}": float(v) for k, v in step_stats.items()},
        }
        if run.device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        if digest is not None:
            record["batch_digest"] = digest
        self.metrics.write(step, record)
        warning = collapse_warning(step_stats, step, self.warm_steps)
        if warning and step - self.last_warned >= 10 * self.log_every:
            log.warning(warning)
            self.last_warned = step
        self.last.update({k: v for k, v in record.items() if isinstance(v, (int, float))})
        self.window_start, self.window_wait, self.window_steps = time.perf_counter(), 0.0, 0

    def close(self) -> None:
        self.metrics.close()
        if self.bar is not None:
            self.bar.close()

    def summary(self, run: Run) -> None:
        """The closing line: step reached, last loss, throughput and skipped data."""
        if "loss/total" not in self.last:
            return
        log.info(
            "step %d of %d: loss %.4f, %.1f images/s; skipped %d samples, %d shards",
            run.step,
            run.cfg.optim.steps,
            self.last["loss/total"],
            self.last.get("images_per_s", 0.0),
            int(self.last.get("skipped_samples", 0)),
            int(self.last.get("skipped_shards", 0)),
        )
