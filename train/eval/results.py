"""The files of an evaluation run, read and written: what ``report`` and ``cli`` share.

* ``write_text_atomic``: every JSON and markdown file goes through a temporary name;
* ``figure_arrays``: the self-contained arrays ``phieat-eval run`` saves as ``figures.npz``;
* ``read_metrics_jsonl`` / ``loss_series``: the trainer's log, as loss curves;
* ``current_models``: the ``<name>/metrics.json`` results scored by this evaluation
  protocol (``train.eval.protocol.PROTOCOL_VERSION``), the only ones a report shows.

No tables or figures here: ``tables`` and ``comparisons`` turn results into text,
``report`` writes ``report.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from train.eval.protocol import PROTOCOL_VERSION

logger = logging.getLogger("phieat.train")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary name beside ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metrics_jsonl(path: Path) -> list[dict]:
    """Records of a trainer's ``metrics.jsonl``; unreadable lines are skipped and counted."""
    records, bad = [], 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    if bad:
        logger.warning("%s: skipped %d unreadable lines", path, bad)
    return records


def loss_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{term: (steps, values)}`` for every finite numeric field whose name contains
    ``loss`` (nested dicts are flattened with ``/``); x is ``step`` (else the line number).
    A step logged twice (a resumed run appends to the same file) keeps its last value."""
    series: dict[str, dict[float, float]] = {}
    for n, rec in enumerate(records):
        step = rec.get("step", rec.get("iteration", n))
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            step = n
        for key, value in _flatten(rec).items():
            if "loss" not in key.lower() or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, {})[float(step)] = float(value)
    out = {}
    for key, points in series.items():
        steps = np.array(sorted(points))
        out[key] = (steps, np.array([points[s] for s in steps]))
    return out


def _flatten(rec: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in rec.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "/"))
        else:
            out[name] = v
    return out


def current_models(out: Path, names: list[str]) -> dict[str, dict]:
    """``{name: metrics}`` of the named model folders scored by this evaluation protocol; a
    result of an older protocol (other metric definitions) is left out with a warning, so
    that one table never mixes two definitions of a metric."""
    models = {}
    for name in names:
        metrics = json.loads((out / name / "metrics.json").read_text())
        if metrics.get("protocol_version") != PROTOCOL_VERSION:
            logger.warning(
                "%s: left out of the report: scored by an older evaluation protocol "
                "(version %s, now %s); evaluate it again to include it",
                name,
                metrics.get("protocol_version", 1),
                PROTOCOL_VERSION,
            )
            continue
        models[name] = metrics
    return models


def figure_arrays(figures: dict, images: np.ndarray, material: np.ndarray) -> dict:
    """Turn the index-based figure data of ``protocol.evaluate`` into self-contained arrays
    (pixels included) for ``figures.npz``."""
    out: dict = {}
    if "retrieval_query" in figures:
        q, top = figures["retrieval_query"], figures["retrieval_topk"]
        idx = np.concatenate([q[:, None], top], axis=1)
        blank = np.zeros_like(images[0])
        out["retrieval_images"] = np.stack(
            [np.stack([images[i] if i >= 0 else blank for i in row]) for row in idx]
        )
        out["retrieval_labels"] = np.array(
            [[material[i] if i >= 0 else "" for i in row] for row in idx], dtype=str
        )
        out["retrieval_correct"] = figures["retrieval_correct"]
    if "selection_view" in figures and len(figures["selection_view"]):
        out["selection_images"] = images[figures["selection_view"]]
        out["selection_query"] = figures["selection_query"]
        out["selection_sim"] = figures["selection_sim"]
        out["selection_threshold"] = figures["selection_threshold"]
    if "pca_views" in figures:
        out["pca_images"] = images[figures["pca_views"]]
        out["pca_patches"] = figures["pca_patches"].astype(np.float32)
    return out
