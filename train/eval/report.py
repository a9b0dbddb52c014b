"""The evaluation report: ``report.md``, its tables, and the figures (``train.eval.figures``).

``phieat-eval run`` leaves, per model, ``<out>/<name>/metrics.json``, ``figures.npz`` (the
pixels and maps the figures need) and, when the trainer's log was found,
``train_metrics.jsonl``. ``write_report(out)`` turns a folder of those into::

    <out>/report.md                   headline table, comparisons, every figure
    <out>/summary.json                the headline numbers per model, for scripts
    <out>/figures/loss_curves.png     one panel per loss term, one colour per model
    <out>/figures/<name>_retrieval.png   query + top-5 (green: same material, red: not)
    <out>/figures/<name>_selection.png   image + query, similarity heat-map, selection
    <out>/figures/<name>_pca.png         3 principal components of patch features as RGB

It needs no model and no eval data, so it can be re-run at any time.

This module draws the figures and writes the files; the text comes from ``tables`` (headline
and seed tables, notes) and ``comparisons`` (seed groups set against each other), the
results from ``results`` (``current_models``); their public names are re-exported here,
so ``from train.eval import report`` reaches the whole report.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from train.eval.comparisons import baseline_lines, comparison_lines
from train.eval.figures import loss_curves, pca_figure, retrieval_grid, selection_figure
from train.eval.results import (
    current_models,
    figure_arrays,
    loss_series,
    read_metrics_jsonl,
    write_text_atomic,
)
from train.eval.tables import (
    CHANCE_NOTE,
    HEADLINE,
    below_chance_lines,
    few_query_lines,
    fmt,
    headline_table,
    seed_groups,
    seed_table,
)

__all__ = [
    "baseline_lines",
    "below_chance_lines",
    "comparison_lines",
    "current_models",
    "few_query_lines",
    "figure_arrays",
    "fmt",
    "headline_table",
    "loss_series",
    "read_metrics_jsonl",
    "seed_groups",
    "seed_table",
    "write_report",
    "write_text_atomic",
]

logger = logging.getLogger("phieat.train")


def _save_png(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _model_line(name: str, m: dict) -> str:
    info = m.get("model", {})
    bits = [f"`{info.get('spec', '?')}`"]
    for key in ("arch", "step", "physical_augmentation", "eval_image_size"):
        if info.get(key) is not None:
            bits.append(f"{key}={info[key]}")
    return f"- **{name}**: " + ", ".join(bits)


def write_report(out_dir: str | Path) -> Path:
    """Draw every figure and write ``report.md`` from the model folders under ``out_dir``."""
    out = Path(out_dir)
    names = sorted(p.parent.name for p in out.glob("*/metrics.json"))
    if not names:
        raise FileNotFoundError(
            f"{out}: no <model>/metrics.json inside; run `phieat-eval run ... --out {out}` first"
        )
    order_file = out / "models.json"
    if order_file.exists():
        listed = [n for n in json.loads(order_file.read_text()) if n in names]
        names = listed + [n for n in names if n not in listed]
    models = current_models(out, names)
    names = list(models)
    if not names:
        raise FileNotFoundError(
            f"{out}: every result there was scored by an older evaluation protocol; run "
            f"`phieat-eval run ... --out {out}` again"
        )
    figs = out / "figures"
    lines = ["# phieat evaluation report", ""]
    first = models[names[0]]
    data = first.get("data", {})
    counts = first.get("counts", {})
    lines += [
        f"Eval data: `{data.get('eval_data', '?')}` — {counts.get('object_views', 0)} object views "
        f"of {counts.get('materials', 0)} materials, {counts.get('selection_views', 0)} "
        f"material-selection views of {counts.get('scenes', '?')} scenes.",
        f"Val data (thresholds, probe hyper-parameters): `{data.get('val_data') or 'none'}`.",
        f"Leakage check against the training index: {data.get('leakage_check', 'not run')}.",
        "",
        "## Headline",
        "",
        headline_table(models),
        "",
        CHANCE_NOTE,
        "",
        "R@k / mAP: for each view, the gallery is every view whose mesh *and* light differ from "
        "it; a hit shows the same material. Same-colour: the gallery keeps only the "
        f"{first.get('config', {}).get('n_negatives', '?')} wrong views closest in mean colour. "
        "k-NN: temperature-weighted vote of the nearest views of *other* materials. Probes: "
        "logistic regression on the frozen CLS feature, 3 folds; the category probe keeps "
        "each material group in one fold and deals every category's groups over all folds; "
        "the roughness (glossy / medium / rough) and metal-vs-dielectric probes hold whole "
        "material families out, so they score what carries over to a kind of material never "
        "seen. Selection: click one object's pixel, select the pixels whose patch feature is "
        "at least as similar as the threshold; scored over the whole image (background and "
        "the other materials are negatives). Threshold chosen on "
        f"{first.get('selection', {}).get('threshold_from', 'a separate split')}.",
        "",
    ]
    few = few_query_lines(models) + below_chance_lines(models)
    lines += [*few, ""] if few else []
    comp = comparison_lines(models)
    if comp:
        lines += ["## Physical vs photometric, and what L_contrast adds", "", *comp, ""]
    base = baseline_lines(models)
    if base:
        lines += ["## Against the untrained baselines", "", *base, ""]
    seeds = seed_table(models)
    if seeds:
        lines += ["## Seeds", "", "Mean ± half the spread (max - min) over seeds.", "", seeds, ""]
    lines += ["## Models", "", *[_model_line(n, models[n]) for n in names], ""]

    runs = {}
    for n in names:
        path = out / n / "train_metrics.jsonl"
        if path.exists():
            series = loss_series(read_metrics_jsonl(path))
            if series:
                runs[n] = series
    if runs:
        _save_png(loss_curves(runs), figs / "loss_curves.png")
        lines += ["## Training losses", "", "![loss curves](figures/loss_curves.png)", ""]

    for section, key, draw in (
        ("Retrieval examples", "retrieval", _draw_retrieval),
        ("Material selection", "selection", _draw_selection),
        ("Patch features (PCA)", "pca", _draw_pca),
    ):
        shown = []
        for n in names:
            npz = out / n / "figures.npz"
            if not npz.exists():
                continue
            with np.load(npz, allow_pickle=False) as f:
                img = draw(f, n)
            if img is not None:
                rel = f"figures/{n}_{key}.png"
                _save_png(img, out / rel)
                shown.append(f"![{n} {key}]({rel})")
        if shown:
            lines += [f"## {section}", "", *[s + "\n" for s in shown]]

    summary = {
        "models": {n: {h: f(models[n]) for h, _, f in HEADLINE} for n in names},
        "comparisons": comp,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines += [
        "## All metrics",
        "",
        "Per model in `<name>/metrics.json`; headline numbers in `summary.json`.",
        "",
    ]
    path = write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    logger.info("wrote %s", path)
    return path


def _draw_retrieval(f: np.lib.npyio.NpzFile, name: str) -> Image.Image | None:
    if "retrieval_images" not in f or not f["retrieval_images"].size:
        return None
    return retrieval_grid(
        f["retrieval_images"],
        f["retrieval_labels"],
        f["retrieval_correct"],
        f"{name}: cross-shape / cross-light retrieval",
    )


def _draw_selection(f: np.lib.npyio.NpzFile, name: str) -> Image.Image | None:
    if "selection_images" not in f or not f["selection_images"].size:
        return None
    return selection_figure(
        f["selection_images"],
        f["selection_query"],
        f["selection_sim"],
        float(f["selection_threshold"]),
        f"{name}: click a pixel, select the same material",
    )


def _draw_pca(f: np.lib.npyio.NpzFile, name: str) -> Image.Image | None:
    if "pca_images" not in f or not f["pca_images"].size:
        return None
    return pca_figure(f["pca_images"], f["pca_patches"], f"{name}: patch features, PCA")
