"""The report's comparisons: seed groups of trained models set against each other
(physical vs photometric views, with vs without L_contrast, material labels vs one sample's
views) and against the untrained baselines, each difference read against the seed-to-seed
spread.

Pure functions of ``{name: metrics}`` dicts, built on ``tables.HEADLINE`` and
``tables.seed_groups``; ``report`` and ``cli`` print the lines.
"""

from __future__ import annotations

import numpy as np

from train.eval.tables import HEADLINE, seed_groups


def _r1(m: dict) -> float | None:
    return m.get("retrieval", {}).get("recall@1")


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
