"""Material selection: "click a pixel, select the same material" from patch features.

Similarity maps upsampled from the patch grid, IoU / F1 / L1 of one selection, the threshold
chosen on a separate split, the floors (select everything, per-query oracle) a selection IoU
is read against, and the query pixels drawn from each material region.

Part of ``train.eval.metrics`` (shapes and conventions in its docstring); builds on
``train.eval.metrics.common``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from train.eval.metrics.common import l2_normalise

UPSAMPLE_MODES = ("bilinear", "nearest")


def similarity_map(
    patch_feats: np.ndarray,
    query_yx: tuple[int, int],
    image_hw: tuple[int, int],
    upsample: str = "bilinear",
) -> np.ndarray:
    """``(H, W)`` cosine similarity of every location to the patch under a query pixel.

    ``patch_feats`` is ``(h, w, D)`` for an image of size ``image_hw = (H, W)``; the query
    feature is the patch containing pixel ``query_yx``; the ``(h, w)`` similarity grid is
    upsampled to ``(H, W)``: ``bilinear`` (pixel centres, ``align_corners=False``; smooth, but
    a pixel at a patch corner mixes four patches) or ``nearest`` (each pixel takes its
    patch's value).
    """
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
    h, w, _ = patch_feats.shape
    big_h, big_w = image_hw
    y, x = query_yx
    if not (0 <= y < big_h and 0 <= x < big_w):
        raise ValueError(f"query pixel {query_yx} is outside the image {image_hw}")
    pf = l2_normalise(patch_feats)
    q = pf[y * h // big_h, x * w // big_w]
    grid = torch.from_numpy(np.ascontiguousarray(pf @ q))[None, None]
    if upsample == "nearest":
        up = F.interpolate(grid, size=(big_h, big_w), mode="nearest")
    else:
        up = F.interpolate(grid, size=(big_h, big_w), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def selection_scores(
    sim: np.ndarray, target: np.ndarray, threshold: float, valid: np.ndarray | None = None
) -> dict:
    """IoU, F1 and L1 of one selection.

    ``sim`` ``(H, W)`` similarity map; ``target`` ``(H, W)`` bool (pixels of the query's
    material); ``valid`` ``(H, W)`` bool pixels that count (default: all). Selected pixels
    are ``sim >= threshold``. L1 is the mean absolute difference between the soft selection
    ``clip(sim, 0, 1)`` and the target over valid pixels.
    """
    valid = np.ones(sim.shape, bool) if valid is None else valid.astype(bool)
    tgt = target.astype(bool) & valid
    pred = (sim >= threshold) & valid
    inter = float((pred & tgt).sum())
    union = float((pred | tgt).sum())
    denom = float(pred.sum() + tgt.sum())
    n_valid = max(int(valid.sum()), 1)
    return {
        "iou": inter / union if union else 1.0,
        "f1": 2 * inter / denom if denom else 1.0,
        "l1": float(np.abs(np.clip(sim, 0, 1) - tgt)[valid].sum() / n_valid),
    }


DEFAULT_THRESHOLDS = np.round(np.linspace(-1.0, 1.0, 201), 4)


def _iou_per_candidate(
    sims: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    valids: Sequence[np.ndarray | None],
    cand: np.ndarray,
) -> np.ndarray:
    """``(n_selections, n_candidates)`` IoU of every selection at every threshold."""
    ious = np.zeros((len(sims), cand.size))
    for n, (sim, tgt, val) in enumerate(zip(sims, targets, valids, strict=True)):
        val = np.ones(sim.shape, bool) if val is None else val.astype(bool)
        s, t = sim[val], tgt.astype(bool)[val]
        pred = s[None, :] >= cand[:, None]
        inter = (pred & t).sum(1)
        union = (pred | t).sum(1)
        ious[n] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return ious


def selection_floors(
    sims: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    valids: Sequence[np.ndarray | None] | None = None,
    candidates: np.ndarray = DEFAULT_THRESHOLDS,
) -> dict:
    """What a selection IoU is worth: ``iou_select_all`` (every valid pixel selected: no
    features needed) and ``iou_oracle`` (each selection at its own best threshold: the most
    these similarity maps allow, an upper bound no threshold chosen on val can beat)."""
    if not sims:
        return {"iou_select_all": None, "iou_oracle": None}
    valids = valids if valids is not None else [None] * len(sims)
    everything = [np.full(s.shape, np.inf, np.float32) for s in sims]
    select_all = _iou_per_candidate(everything, targets, valids, np.zeros(1, np.float32))
    ious = _iou_per_candidate(sims, targets, valids, np.asarray(candidates, np.float32))
    return {"iou_select_all": float(select_all.mean()), "iou_oracle": float(ious.max(1).mean())}


def choose_threshold(
    sims: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    valids: Sequence[np.ndarray | None] | None = None,
    candidates: np.ndarray = DEFAULT_THRESHOLDS,
) -> tuple[float, np.ndarray]:
    """Threshold that maximises mean IoU over the given selections (on a separate split).

    Returns ``(threshold, mean_iou_per_candidate)``. When several neighbouring candidates
    tie for the best IoU, the middle of that run is taken (the margin is largest there).
    """
    if not sims:
        raise ValueError("choose_threshold needs at least one selection")
    valids = valids if valids is not None else [None] * len(sims)
    cand = np.asarray(candidates, dtype=np.float32)
    mean = _iou_per_candidate(sims, targets, valids, cand).mean(0)
    first = int(np.argmax(mean))
    last = first
    while last + 1 < mean.size and mean[last + 1] >= mean[first] - 1e-12:
        last += 1
    return float(cand[(first + last) // 2]), mean


def sample_queries(
    matid: np.ndarray,
    rng: np.random.Generator,
    valid: np.ndarray | None = None,
    per_region: int = 1,
    min_pixels: int = 16,
) -> list[tuple[int, int]]:
    """Query pixels for material selection: ``per_region`` per material present.

    ``matid`` ``(H, W)`` material index map. Regions (valid pixels of one index) smaller than
    ``min_pixels`` are skipped; pixels are drawn from the region's interior (pixels whose 4
    neighbours share the index) when it has one.
    """
    matid = np.asarray(matid)
    valid = np.ones(matid.shape, bool) if valid is None else valid.astype(bool)
    interior = valid.copy()
    pad = np.pad(matid, 1, mode="edge")
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        interior &= pad[dy : dy + matid.shape[0], dx : dx + matid.shape[1]] == matid
    out = []
    for value in np.unique(matid[valid]):
        region = valid & (matid == value)
        if region.sum() < min_pixels:
            continue
        pool = region & interior
        ys, xs = np.nonzero(pool if pool.any() else region)
        pick = rng.choice(ys.size, size=min(per_region, ys.size), replace=False)
        out.extend((int(ys[p]), int(xs[p])) for p in pick)
    return out


def material_selection(
    patch_feats: Sequence[np.ndarray],
    matids: Sequence[np.ndarray],
    queries: Sequence[Sequence[tuple[int, int]]],
    threshold: float,
    valids: Sequence[np.ndarray | None] | None = None,
    upsample: str = "bilinear",
) -> dict:
    """Mean IoU / F1 / L1 of "click a pixel, select the same material" over images.

    ``patch_feats[n]`` ``(h, w, D)``, ``matids[n]`` ``(H, W)``, ``queries[n]`` a list of
    ``(y, x)`` pixels of image ``n``; the target of a query is every valid pixel with the
    query pixel's material index. Images without queries are counted in ``n_excluded``.
    """
    valids = valids if valids is not None else [None] * len(matids)
    per = []
    excluded = 0
    for pf, mid, qs, val in zip(patch_feats, matids, queries, valids, strict=True):
        if not qs:
            excluded += 1
            continue
        for y, x in qs:
            sim = similarity_map(pf, (y, x), mid.shape, upsample)
            per.append(selection_scores(sim, mid == mid[y, x], threshold, val))
    out = {k: (float(np.mean([p[k] for p in per])) if per else None) for k in ("iou", "f1", "l1")}
    out.update(threshold=float(threshold), n_queries=len(per), n_excluded=excluded)
    return out


def selection_maps(
    patch_feats: Sequence[np.ndarray],
    matids: Sequence[np.ndarray],
    queries: Sequence[Sequence[tuple[int, int]]],
    valids: Sequence[np.ndarray | None] | None = None,
    upsample: str = "bilinear",
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """Flatten images x queries into (similarity maps, targets, valid masks) lists."""
    valids = valids if valids is not None else [None] * len(matids)
    sims, tgts, vals = [], [], []
    for pf, mid, qs, val in zip(patch_feats, matids, queries, valids, strict=True):
        for y, x in qs:
            sims.append(similarity_map(pf, (y, x), mid.shape, upsample))
            tgts.append(mid == mid[y, x])
            vals.append(val)
    return sims, tgts, vals
