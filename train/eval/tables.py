"""The report's tables and notes, as markdown: the headline table with its chance row,
the seed table, and the lines that flag probes at chance and metrics scored on few queries.

``HEADLINE`` names every headline metric and how to read it from a ``metrics.json``;
``comparisons`` and ``report`` build on it. Pure functions of ``{name: metrics}`` dicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

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
