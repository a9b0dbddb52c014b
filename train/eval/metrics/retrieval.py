"""Metrics over the pairwise similarities of per-view features: cross-shape, cross-light
retrieval (with the mask readout and the same-colour variant), weighted k-NN category
accuracy, and the intra / inter-material invariance ratio.

Part of ``train.eval.metrics`` (shapes and conventions in its docstring); builds on
``train.eval.metrics.common``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from train.eval.metrics.common import check_labels, cosine_matrix


def average_precision(relevant_in_rank_order: np.ndarray) -> float:
    """AP of one ranked list: ``relevant_in_rank_order`` is a bool array, best first."""
    rel = np.asarray(relevant_in_rank_order, dtype=bool)
    n_pos = int(rel.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one relevant item")
    hits = np.cumsum(rel)
    ranks = np.arange(1, rel.size + 1)
    return float((hits[rel] / ranks[rel]).sum() / n_pos)


# ----------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalResult:
    """Per-query results of a retrieval run.

    ``queries``: ``(Q,)`` indices of the scored queries; ``topk``: ``(Q, K)`` gallery indices
    ranked best first (``-1`` pads galleries shorter than K); ``correct``: ``(Q, K)`` bool;
    ``ap``: ``(Q,)``; ``chance_r1``: ``(Q,)`` the R@1 a random ranking would get
    (positives / gallery size).
    """

    queries: np.ndarray
    topk: np.ndarray
    correct: np.ndarray
    ap: np.ndarray
    chance_r1: np.ndarray
    n_excluded: int
    ks: tuple[int, ...] = (1, 5)
    gallery_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def metrics(self) -> dict:
        """``{"recall@1", "recall@5", "map", "chance_recall@1", "n_queries", "n_excluded"}``."""
        n = int(self.queries.size)
        out: dict = {}
        for k in self.ks:
            out[f"recall@{k}"] = float(self.correct[:, :k].any(axis=1).mean()) if n else None
        out["map"] = float(self.ap.mean()) if n else None
        out["chance_recall@1"] = float(self.chance_r1.mean()) if n else None
        out["mean_gallery_size"] = float(self.gallery_sizes.mean()) if n else None
        out["n_queries"] = n
        out["n_excluded"] = int(self.n_excluded)
        return out


def _rank(
    sims: np.ndarray, gallery: np.ndarray, positive: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank ``gallery`` (indices) by ``sims`` -> (top-k indices, top-k correct, AP)."""
    # Index order before a stable sort: ties never favour positives listed first.
    gallery = np.sort(gallery)
    order = gallery[np.argsort(-sims[gallery], kind="stable")]
    rel = positive[order]
    top = np.full(k, -1, dtype=np.int64)
    cor = np.zeros(k, dtype=bool)
    top[: min(k, order.size)] = order[:k]
    cor[: min(k, order.size)] = rel[:k]
    return top, cor, average_precision(rel)


def mask_pool(patches: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """Object-mask readout: the mean of the patch features ``(N, h, w, D)`` weighted by the
    fraction of each patch that the object mask ``(N, H, W)`` covers. A view with no object
    pixels (or no masks at all) falls back to the mean over every patch."""
    patches = np.asarray(patches, np.float32)
    n, h, w, _ = patches.shape
    if masks is None:
        return patches.mean(axis=(1, 2))
    masks = np.asarray(masks, bool)
    big_h, big_w = masks.shape[1:]
    if big_h % h or big_w % w:
        raise ValueError(f"mask size {big_h}x{big_w} is not a multiple of the patch grid {h}x{w}")
    cover = masks.reshape(n, h, big_h // h, w, big_w // w).mean(axis=(2, 4))  # (N, h, w)
    empty = cover.sum(axis=(1, 2)) <= 0
    cover[empty] = 1.0
    weights = cover / cover.sum(axis=(1, 2), keepdims=True)
    return np.einsum("nhw,nhwd->nd", weights, patches)


def cross_retrieval(
    feats: np.ndarray,
    material: Sequence,
    mesh: Sequence,
    light: Sequence,
    ks: Sequence[int] = (1, 5),
    colour: np.ndarray | None = None,
    n_negatives: int | None = None,
) -> RetrievalResult:
    """Cross-shape, cross-light material retrieval.

    For each query view ``i`` the gallery is every view ``j != i`` whose mesh **and** light
    both differ from the query's; a gallery item is correct when it shows the same material.
    Queries without any correct gallery item are excluded and counted.

    Same-colour distractor variant: pass ``colour`` (``(N, 3)`` mean colour of each view)
    and ``n_negatives``; the gallery then keeps all correct items but only the
    ``n_negatives`` wrong items whose mean colour is closest (Euclidean) to the query's, so
    colour alone cannot tell the material apart.
    """
    feats = np.asarray(feats)
    n = feats.shape[0]
    material = check_labels(material, n, "material")
    mesh = check_labels(mesh, n, "mesh")
    light = check_labels(light, n, "light")
    if (colour is None) != (n_negatives is None):
        raise ValueError("the same-colour variant needs both colour and n_negatives")
    if colour is not None:
        colour = np.asarray(colour, dtype=np.float64)
        if colour.shape != (n, 3):
            raise ValueError(f"colour must have shape ({n}, 3), got {colour.shape}")
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
    kmax = max(ks)
    sims = cosine_matrix(feats)
    queries, tops, cors, aps, chance, sizes = [], [], [], [], [], []
    excluded = 0
    for i in range(n):
        ok = (mesh != mesh[i]) & (light != light[i])
        ok[i] = False
        positive = material == material[i]
        if not (ok & positive).any():
            excluded += 1
            continue
        if colour is not None:
            neg = np.flatnonzero(ok & ~positive)
            dist = np.linalg.norm(colour[neg] - colour[i], axis=1)
            keep = neg[np.argsort(dist, kind="stable")[:n_negatives]]
            gallery = np.concatenate([np.flatnonzero(ok & positive), keep])
        else:
            gallery = np.flatnonzero(ok)
        top, cor, ap = _rank(sims[i], gallery, positive, kmax)
        queries.append(i)
        tops.append(top)
        cors.append(cor)
        aps.append(ap)
        chance.append(positive[gallery].mean())
        sizes.append(gallery.size)
    return RetrievalResult(
        queries=np.asarray(queries, dtype=np.int64),
        topk=np.asarray(tops, dtype=np.int64).reshape(-1, kmax),
        correct=np.asarray(cors, dtype=bool).reshape(-1, kmax),
        ap=np.asarray(aps, dtype=np.float64),
        chance_r1=np.asarray(chance, dtype=np.float64),
        n_excluded=excluded,
        ks=tuple(ks),
        gallery_sizes=np.asarray(sizes, dtype=np.int64),
    )


# ----------------------------------------------------------------------------- k-NN


def knn_accuracy(
    feats: np.ndarray,
    category: Sequence,
    material: Sequence,
    ks: Sequence[int] = (10, 20),
    temperature: float = 0.07,
    exclude: Sequence | None = None,
) -> dict:
    """Temperature-weighted k-NN category accuracy, leaving the query's material out.

    Each neighbour ``j`` of query ``i`` votes for its category with weight
    ``exp(cos(f_i, f_j) / temperature)`` (DINO's weighted k-NN); the category with the
    largest total wins. Neighbours with the same ``material`` as the query are never used,
    nor (if ``exclude`` is given, ``(N,)`` labels such as material families) neighbours
    sharing the query's ``exclude`` label. Fewer than ``k`` admissible neighbours: the ones
    there are vote; none: the query is excluded and counted.

    Returns ``{"knn@10": acc, "knn@20": acc, "n_queries": ..., "n_excluded": ...}``.
    """
    feats = np.asarray(feats)
    n = feats.shape[0]
    category = check_labels(category, n, "category")
    material = check_labels(material, n, "material")
    banned = material[:, None] == material[None, :]
    if exclude is not None:
        ex = check_labels(exclude, n, "exclude")
        banned |= ex[:, None] == ex[None, :]
    classes, cat_idx = np.unique(category, return_inverse=True)
    sims = cosine_matrix(feats).astype(np.float64)
    sims[banned] = -np.inf
    valid = np.isfinite(sims).any(axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")
    out: dict = {}
    for k in ks:
        correct = []
        for i in np.flatnonzero(valid):
            nb = order[i, :k]
            nb = nb[np.isfinite(sims[i, nb])]
            votes = np.zeros(classes.size)
            np.add.at(votes, cat_idx[nb], np.exp((sims[i, nb] - 1.0) / temperature))
            correct.append(votes.argmax() == cat_idx[i])
        out[f"knn@{k}"] = float(np.mean(correct)) if correct else None
    out["chance"] = float(np.max(np.bincount(cat_idx)) / n) if n else None
    out["n_queries"] = int(valid.sum())
    out["n_excluded"] = int(n - valid.sum())
    return out


# ----------------------------------------------------------------------------- invariance


def invariance(feats: np.ndarray, material: Sequence, mesh: Sequence, light: Sequence) -> dict:
    """Mean cosine distance ``1 - cos`` within and across materials.

    ``intra``: over pairs of different views of the same material. ``inter``: over pairs of
    different materials rendered with the same mesh and the same light. ``ratio`` =
    intra / inter (lower: the feature follows the material, not the shape or light); None
    when either is empty or ``inter`` is ~0 (collapsed features).
    """
    feats = np.asarray(feats)
    n = feats.shape[0]
    material = check_labels(material, n, "material")
    mesh = check_labels(mesh, n, "mesh")
    light = check_labels(light, n, "light")
    # float64 and clipped: near-collapsed features have distances at rounding level.
    unit = np.asarray(feats, np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    upper = np.triu(np.ones((n, n), bool), k=1)
    same_mat = material[:, None] == material[None, :]
    same_scene = (mesh[:, None] == mesh[None, :]) & (light[:, None] == light[None, :])
    intra_mask = upper & same_mat
    inter_mask = upper & ~same_mat & same_scene
    intra = float(dist[intra_mask].mean()) if intra_mask.any() else None
    inter = float(dist[inter_mask].mean()) if inter_mask.any() else None
    ratio = intra / inter if intra is not None and inter is not None and inter > 1e-9 else None
    return {
        "intra": intra,
        "inter": inter,
        "ratio": ratio,
        "n_intra_pairs": int(intra_mask.sum()),
        "n_inter_pairs": int(inter_mask.sum()),
    }
