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
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from train.eval.figures import loss_curves, pca_figure, retrieval_grid, selection_figure
from train.eval.protocol import PROTOCOL_VERSION

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


# ----------------------------------------------------------------------------- report.md

HEADLINE: list[tuple[str, str, Callable[[dict], object]]] = [
    (
        "R@1",
        "cross-shape/light retrieval Recall@1",
        lambda m: m.get("retrieval", {}).get("recall@1"),
    ),
    ("R@5", "Recall@5", lambda m: m.get("retrieval", {}).get("recall@5")),
    (
        "R@1 mask",
        "R@1 of the object-mask readout (mean patch feature on the object)",
        lambda m: m.get("retrieval_masked", {}).get("recall@1"),
    ),
    ("mAP", "mean average precision", lambda m: m.get("retrieval", {}).get("map")),
    (
        "R@1 same-colour",
        "R@1 when the wrong gallery items match the query's colour",
        lambda m: m.get("retrieval_same_colour", {}).get("recall@1"),
    ),
    ("k-NN@10", "category, own material left out", lambda m: m.get("knn", {}).get("knn@10")),
    ("k-NN@20", "", lambda m: m.get("knn", {}).get("knn@20")),
    (
        "probe cat.",
        "linear probe: category, material groups held out (every category seen in training)",
        lambda m: m.get("linear_probe", {}).get("accuracy"),
    ),
    (
        "probe rough.",
        "linear probe: roughness bucket, whole families held out (balanced accuracy)",
        lambda m: m.get("probe_roughness", {}).get("accuracy"),
    ),
    (
        "probe metal",
        "linear probe: metal vs dielectric, whole families held out (balanced accuracy)",
        lambda m: m.get("probe_metal", {}).get("accuracy"),
    ),
    (
        "sel. IoU",
        "material selection IoU over the whole image",
        lambda m: m.get("selection", {}).get("iou"),
    ),
    (
        "sel. oracle",
        "selection IoU at each query's best threshold (upper bound of these features)",
        lambda m: m.get("selection", {}).get("iou_oracle"),
    ),
    ("sel. F1", "", lambda m: m.get("selection", {}).get("f1")),
    ("sel. L1", "lower is better", lambda m: m.get("selection", {}).get("l1")),
    (
        "intra/inter",
        "invariance: same-material / same-scene distance, lower is better",
        lambda m: m.get("invariance", {}).get("ratio"),
    ),
]


def fmt(v: object) -> str:
    """A metric for a table or a log line: floats to 3 decimals, None as "-"."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


_cell = fmt


def _tuned_on(m: dict) -> str:
    """Where a model's selection threshold and probe weight decays were chosen."""
    sources = {
        str(m.get(k, {}).get(field))
        for k, field in (
            ("selection", "threshold_from"),
            ("linear_probe", "hyperparameters_from"),
            ("probe_roughness", "hyperparameters_from"),
            ("probe_metal", "hyperparameters_from"),
        )
        if m.get(k, {}).get(field)
    }
    if not sources:
        return "-"
    return " / ".join(sorted("val" if x.startswith("val") else "eval part" for x in sources))


def headline_table(models: dict[str, dict]) -> str:
    """Markdown table: one row per model, one column per headline metric, the row of chance
    levels (selection: select everything), and where thresholds and probe settings were
    chosen ("val": the val set; "eval part": a held-out part of the eval set)."""
    head = "| model | " + " | ".join(h for h, _, _ in HEADLINE) + " | tuned on |"
    sep = "|---|" + "---:|" * len(HEADLINE) + "---|"
    rows = [head, sep]
    for name, m in models.items():
        cells = " | ".join(_cell(f(m)) for _, _, f in HEADLINE)
        rows.append(f"| {name} | {cells} | {_tuned_on(m)} |")
    if models:
        any_m = next(iter(models.values()))
        knn_chance = any_m.get("knn", {}).get("chance")
        floors = {
            "R@1": any_m.get("retrieval", {}).get("chance_recall@1"),
            "R@1 mask": any_m.get("retrieval_masked", {}).get("chance_recall@1"),
            "R@1 same-colour": any_m.get("retrieval_same_colour", {}).get("chance_recall@1"),
            "k-NN@10": knn_chance,
            "k-NN@20": knn_chance,
            "probe cat.": any_m.get("linear_probe", {}).get("chance"),
            "probe rough.": any_m.get("probe_roughness", {}).get("chance"),
            "probe metal": any_m.get("probe_metal", {}).get("chance"),
            # Selecting every pixel needs no features: the floor of a selection IoU.
            "sel. IoU": any_m.get("selection", {}).get("iou_select_all"),
        }
        chance = [floors.get(h) for h, _, _ in HEADLINE]
        rows.append("| *chance / select all* | " + " | ".join(_cell(c) for c in chance) + " | |")
    return "\n".join(rows)


CHANCE_NOTE = (
    "*Chance row.* R@1 and R@1 mask: the hit rate of a random ranking (positives / gallery "
    "size, averaged over queries). R@1 same-colour: the same for its short gallery; a feature "
    "that follows colour ranks the wrong items first there, because they were picked to "
    "match the query's colour, so it can land *below* this chance: that is the variant doing "
    "its job, not a bug. k-NN: the share of the most frequent category. Probes: the best "
    "constant guess the training folds allow, scored on the test fold (accuracy for the "
    "category; balanced accuracy, 1 / number of classes, for roughness and metal). Selection: "
    "selecting every pixel of the image; *sel. oracle* is each query at its own best "
    "threshold, the most these similarity maps allow."
)

PROBES = (
    ("linear_probe", "category"),
    ("probe_roughness", "roughness bucket"),
    ("probe_metal", "metal vs dielectric"),
)


def below_chance_lines(models: dict[str, dict]) -> list[str]:
    """One line per probe naming the models that do not beat its chance level, saying what
    that means, so that a number at chance is never read as a result."""
    lines = []
    for key, task in PROBES:
        below, chance = [], None
        for name, m in models.items():
            probe = m.get(key, {})
            acc = probe.get("accuracy")
            if acc is None or probe.get("chance") is None or acc > probe["chance"]:
                continue
            chance = probe["chance"]
            below.append(f"{name} ({acc:.3f})")
        if below:
            where = (
                ""
                if key == "linear_probe"
                else ", not in a form that carries over to families never seen"
            )
            lines.append(
                f"- The {task} probe does not beat its chance level ({chance:.3f}) for "
                + ", ".join(below)
                + f": their features do not carry the {task} linearly{where}."
            )
    return lines


FEW_QUERIES = 30  # a metric scored on fewer queries than this is flagged in the report


def few_query_lines(models: dict[str, dict]) -> list[str]:
    """One warning per model and metric scored on fewer than ``FEW_QUERIES`` queries: such a
    number moves by a large step with one query and is no result to compare."""
    lines = []
    for name, m in models.items():
        for key, what in (("retrieval", "retrieval"), ("selection", "selection")):
            n = m.get(key, {}).get("n_queries")
            if n is not None and n < FEW_QUERIES:
                lines.append(
                    f"- **{name}**: {what} was scored on only {n} queries (fewer than "
                    f"{FEW_QUERIES}): read its numbers as anecdotes, not results."
                )
    return lines


SEED_SUFFIX = re.compile(r"[-_.]?(?:s|seed)\d+$")


def seed_groups(models: dict[str, dict]) -> dict[str, list[str]]:
    """Models that differ only by a seed suffix (``physical-s0``, ``physical_seed1``) form
    one group, named without the suffix; every other model is its own group."""
    groups: dict[str, list[str]] = {}
    for name in models:
        groups.setdefault(SEED_SUFFIX.sub("", name) or name, []).append(name)
    return groups


def _r1(m: dict) -> float | None:
    return m.get("retrieval", {}).get("recall@1")


SEED_COLUMNS = (
    "R@1",
    "mAP",
    "R@1 mask",
    "probe cat.",
    "probe rough.",
    "probe metal",
    "sel. IoU",
    "sel. oracle",
    "intra/inter",
)


def seed_table(models: dict[str, dict]) -> str:
    """Markdown table, one row per seed group (``seed_groups``): mean ± half the spread
    (max - min) over its seeds of the main metrics, a single model's value as it is, and the
    chance row of the headline table. Empty when no group has 2+ seeds."""
    groups = seed_groups(models)
    if all(len(names) < 2 for names in groups.values()):
        return ""
    fns = {h: fn for h, _, fn in HEADLINE}
    rows = [
        "| model | seeds | " + " | ".join(SEED_COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(SEED_COLUMNS),
    ]
    for group, names in groups.items():
        cells = []
        for key in SEED_COLUMNS:
            vals = np.array([v for v in (fns[key](models[n]) for n in names) if v is not None])
            if not vals.size:
                cells.append("-")
            elif vals.size == 1:
                cells.append(f"{vals[0]:.3f}")
            else:
                cells.append(f"{vals.mean():.3f} ± {np.ptp(vals) / 2:.3f}")
        rows.append(f"| {group} | {len(names)} | " + " | ".join(cells) + " |")
    chance = headline_table(models).splitlines()[-1].strip("|").split("|")
    by_name = dict(zip([h for h, _, _ in HEADLINE], [c.strip() for c in chance[1:]], strict=False))
    rows.append(
        "| *chance / select all* | | "
        + " | ".join(by_name.get(k, "-") for k in SEED_COLUMNS)
        + " |"
    )
    return "\n".join(rows)


def _contrast_on(m: dict) -> bool | None:
    """Whether a trained model used L_contrast (``loss.contrast_weight`` > 0), if recorded."""
    weight = ((m.get("model", {}).get("config") or {}).get("loss") or {}).get("contrast_weight")
    return None if weight is None else float(weight) > 0


def _labels_of(m: dict) -> str | None:
    """What a trained model's L_contrast positives grouped by (``data.labels``), if recorded."""
    return ((m.get("model", {}).get("config") or {}).get("data") or {}).get("labels")


# Secondary metrics in the comparison lines: (column of HEADLINE, +1 if higher is better).
SECONDARY = (("R@5", 1), ("mAP", 1), ("R@1 mask", 1), ("intra/inter", -1))


def _metric(m: dict, key: str) -> float | None:
    return next(fn for h, _, fn in HEADLINE if h == key)(m)


def _spread(a: np.ndarray, b: np.ndarray) -> float | None:
    """Seed-to-seed spread of a comparison: the larger max - min of the two groups; None when
    either side has a single seed."""
    return max(np.ptp(a), np.ptp(b)) if a.size > 1 and b.size > 1 else None


def _secondary(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str:
    """``R@5 +0.029 (spread 0.008: larger); ...`` for the secondary metrics both sides have."""
    parts = []
    for key, sign in SECONDARY:
        if key not in a or key not in b:
            continue
        gap = a[key].mean() - b[key].mean()
        part = f"{key} {gap:+.3f}"
        spread = _spread(a[key], b[key])
        if spread is not None:
            verdict = "larger" if abs(gap) > spread else "not larger"
            part += f" (spread {spread:.3f}: {verdict})"
        parts.append(part + (", lower is better" if sign < 0 else ""))
    return "; ".join(parts)


def _gap_line(
    a_name: str,
    a: dict[str, np.ndarray],
    a_kind: str,
    b_name: str,
    b: dict[str, np.ndarray],
    b_kind: str,
) -> str:
    """R@1 (the headline: its verdict against the seed spread), then the secondary metrics."""
    r1_a, r1_b = a["R@1"], b["R@1"]
    gap = r1_a.mean() - r1_b.mean()
    line = (
        f"- **{a_name}** ({a_kind}, {r1_a.size} seed(s)) vs **{b_name}** ({b_kind}, "
        f"{r1_b.size}): mean R@1 {r1_a.mean():.3f} vs {r1_b.mean():.3f}, difference {gap:+.3f}"
    )
    spread = _spread(r1_a, r1_b)
    if spread is not None:
        if abs(gap) > spread:
            verdict = f"larger: **{a_name if gap > 0 else b_name}** is ahead"
        else:
            verdict = "not larger: neither is shown ahead"
        line += f"; seed-to-seed spread {spread:.3f}: the difference is {verdict}."
    else:
        line += "; one seed on a side, so no seed-to-seed spread to compare against."
    other = _secondary(a, b)
    if other:
        line += f" Other metrics, difference: {other}."
    return line


def comparison_lines(models: dict[str, dict]) -> list[str]:
    """Each physically augmented group against each photometric group (by the
    ``physical_augmentation`` flag their checkpoints carry) trained with the same L_contrast
    setting (on or off, where recorded), then each physical group with
    L_contrast against each physical group trained without it (``loss.contrast_weight`` 0
    in the recorded config), then physical groups whose L_contrast used the material labels
    against those that used one sample's views only (``data.labels``): the difference of
    mean R@1, and whether it exceeds the
    seed-to-seed spread (max - min within either group); then the same for R@5, mAP and the
    intra/inter distance ratio, where both sides have them."""
    kinds: dict[bool, dict[str, dict[str, np.ndarray]]] = {True: {}, False: {}}
    contrast: dict[bool, dict[str, dict[str, np.ndarray]]] = {True: {}, False: {}}
    labels: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    uses_contrast: dict[str, bool | None] = {}
    for group, names in seed_groups(models).items():
        flags = {models[n].get("model", {}).get("physical_augmentation") for n in names}
        vals = [_r1(models[n]) for n in names]
        if len(flags) != 1 or None in flags or None in vals:
            continue
        physical = flags.pop()
        metrics = {"R@1": np.array(vals, float)}
        for key, _ in SECONDARY:
            other = [_metric(models[n], key) for n in names]
            if None not in other:
                metrics[key] = np.array(other, float)
        kinds[physical][group] = metrics
        uses = {_contrast_on(models[n]) for n in names}
        uses_contrast[group] = uses.pop() if len(uses) == 1 else None
        if physical and uses_contrast[group] is not None:
            on = uses_contrast[group]
            contrast[on][group] = kinds[physical][group]
            by = {_labels_of(models[n]) for n in names}
            if on and len(by) == 1 and None not in by:
                labels.setdefault(by.pop(), {})[group] = kinds[physical][group]
    # Physical vs photometric only where both used the same losses (L_contrast on or off,
    # when recorded): the comparison is then about the views alone.
    lines = [
        _gap_line(p_name, phys, "physical", q_name, photo, "photometric")
        for p_name, phys in kinds[True].items()
        for q_name, photo in kinds[False].items()
        if uses_contrast.get(p_name) == uses_contrast.get(q_name)
    ]
    lines += [
        _gap_line(
            c_name, with_c, "physical + L_contrast", n_name, without, "physical, no L_contrast"
        )
        for c_name, with_c in contrast[True].items()
        for n_name, without in contrast[False].items()
    ]
    lines += [
        _gap_line(
            m_name, with_m, "physical, material labels", s_name, without, "physical, no labels"
        )
        for m_name, with_m in labels.get("material", {}).items()
        for s_name, without in labels.get("sample", {}).items()
    ]
    return lines


def baseline_lines(models: dict[str, dict]) -> list[str]:
    """Each trained group's mean R@1 as a multiple of each untrained baseline's (models whose
    ``physical_augmentation`` is not recorded: pixel statistics, a random-init network)."""
    trained, baselines = {}, {}
    for group, names in seed_groups(models).items():
        vals = [_r1(models[n]) for n in names]
        if None in vals:
            continue
        flags = {models[n].get("model", {}).get("physical_augmentation") for n in names}
        (baselines if flags == {None} else trained)[group] = float(np.mean(vals))
    return [
        f"- **{t_name}** mean R@1 {t_r1:.3f} = {t_r1 / b_r1:.2f}x **{b_name}** ({b_r1:.3f})"
        for t_name, t_r1 in trained.items()
        for b_name, b_r1 in baselines.items()
        if b_r1 > 0
    ]


def _model_line(name: str, m: dict) -> str:
    info = m.get("model", {})
    bits = [f"`{info.get('spec', '?')}`"]
    for key in ("arch", "step", "physical_augmentation", "eval_image_size"):
        if info.get(key) is not None:
            bits.append(f"{key}={info[key]}")
    return f"- **{name}**: " + ", ".join(bits)


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
