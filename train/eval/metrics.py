"""Metrics for material features: pure functions over arrays with documented shapes.

Notation used in every docstring below:

* ``N`` views, ``D`` feature dimensions; ``feats`` is ``(N, D)`` float (any scale: cosine
  similarity is used, so each row is L2-normalised inside the function).
* ``material``, ``mesh``, ``light``, ``category``, ``group`` are ``(N,)`` arrays of labels
  (ints or strings); equal values mean the same thing.
* Images are ``(H, W)``; patch features ``(h, w, D)``; a material-index map ``(H, W)`` ints.

A query that cannot be scored (no valid gallery item, no neighbour, an empty region) is
left out of the mean and counted in ``n_excluded``: metrics are never NaN because of it.
Empty results are ``None`` so that they serialise to JSON ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- helpers


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (``(..., D)``) scaled to unit length, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``(Na, Nb)`` cosine similarities between rows of ``a`` and ``b`` (``b = a`` if None)."""
    a = l2_normalise(a)
    b = a if b is None else l2_normalise(b)
    return a @ b.T


def _labels(x: Sequence | np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match feats, got {arr.shape}")
    return arr


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
    material = _labels(material, n, "material")
    mesh = _labels(mesh, n, "mesh")
    light = _labels(light, n, "light")
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
    category = _labels(category, n, "category")
    material = _labels(material, n, "material")
    banned = material[:, None] == material[None, :]
    if exclude is not None:
        ex = _labels(exclude, n, "exclude")
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


# ----------------------------------------------------------------------------- linear probe


def _fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    weight_decay: float,
    max_iter: int,
    balanced: bool = False,
) -> torch.nn.Linear:
    model = torch.nn.Linear(x.shape[1], n_classes)
    weight = None
    if balanced:
        counts = torch.bincount(y, minlength=n_classes).clamp(min=1).float()
        weight = counts.sum() / (n_classes * counts)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, weight=weight)
        loss = loss + weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _score(pred: np.ndarray, y: np.ndarray, balanced: bool) -> float:
    """Accuracy, or balanced accuracy (the mean recall over the classes present in ``y``;
    labels outside the train classes are encoded -1 and are always wrong)."""
    if not balanced:
        return float((pred == y).mean())
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def _constant_score(ytr: np.ndarray, yte: np.ndarray, balanced: bool) -> float:
    """The score of the best constant guess the train split allows: its most frequent
    label (ties: the first in sorted order), scored on the test split. The chance level of a
    probe: what a feature that knows nothing gets."""
    values, counts = np.unique(ytr, return_counts=True)
    guess = values[int(np.argmax(counts))]
    return _score(np.full(yte.shape, guess, dtype=yte.dtype), yte, balanced)


def _probe_search(
    xtr: torch.Tensor,
    ytr: torch.Tensor,
    xva: torch.Tensor,
    yva: np.ndarray,
    n_classes: int,
    weight_decays: Sequence[float],
    max_iter: int,
    balanced: bool,
) -> tuple[tuple[float, float, torch.nn.Linear], dict[str, float]]:
    """Fit one probe per weight decay; keep the best on val (ties: the larger decay)."""
    val_acc: dict[str, float] = {}
    best: tuple[float, float, torch.nn.Linear] | None = None
    for wd in weight_decays:
        model = _fit_logreg(xtr, ytr, n_classes, wd, max_iter, balanced)
        with torch.no_grad():
            acc = _score(model(xva).argmax(1).numpy(), yva, balanced)
        val_acc[f"{wd:g}"] = acc
        if best is None or acc >= best[0]:
            best = (acc, wd, model)
    if best is None:
        raise ValueError("linear probe needs at least one weight decay")
    return best, val_acc


def linear_probe(
    train: tuple[np.ndarray, Sequence],
    val: tuple[np.ndarray, Sequence],
    test: tuple[np.ndarray, Sequence],
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 200,
    balanced: bool = False,
) -> dict:
    """Logistic regression on frozen features; weight decay chosen on ``val``.

    Each split is ``(feats (n, D), labels (n,))``. Features are standardised with the train
    split's mean and std. The probe is fit on ``train`` once per weight decay (L-BFGS, full
    batch, deterministic from zero init), the decay with the best ``val`` score is kept
    (ties: the larger decay) and that probe is scored on ``test``. Test labels never seen in
    train can't be predicted; they count as errors and are reported in ``n_test_unseen``.
    ``chance`` is the score of the train split's most frequent label on the test split;
    ``predictions`` ``(n_test,)`` the predicted labels.

    ``balanced``: classes weigh inversely to their train frequency in the fit, and the score
    is balanced accuracy (mean recall over the test split's classes; a constant guess gets
    1 / number of test classes): the honest score when one label dominates.
    """
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    ytr, yva, yte = (np.asarray(v) for v in (ytr, yva, yte))
    classes = np.unique(ytr)
    if classes.size < 2:
        raise ValueError("linear probe needs at least 2 classes in the train split")
    lookup = {c: i for i, c in enumerate(classes.tolist())}

    def encode(y: np.ndarray) -> np.ndarray:
        return np.asarray([lookup.get(v, -1) for v in y.tolist()], dtype=np.int64)

    mean = np.asarray(xtr, np.float64).mean(0)
    std = np.asarray(xtr, np.float64).std(0) + 1e-6

    def prep(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((np.asarray(x, np.float64) - mean) / std).astype(np.float32))

    t_xtr, t_xva, t_xte = prep(xtr), prep(xva), prep(xte)
    t_ytr = torch.from_numpy(encode(ytr))
    e_va, e_te = encode(yva), encode(yte)
    threads = torch.get_num_threads()
    # A probe is a few thousand numbers: one thread is fastest, and several threads spin
    # badly when the machine's cores are shared.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            best, val_acc = _probe_search(
                t_xtr, t_ytr, t_xva, e_va, classes.size, weight_decays, max_iter, balanced
            )
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        pred = best[2](t_xte).argmax(1).numpy()
    test_acc = _score(pred, e_te, balanced)
    return {
        "accuracy": test_acc,
        "predictions": classes[pred],
        "chance": _constant_score(encode(ytr), e_te, balanced),
        "balanced": balanced,
        "weight_decay": best[1],
        "val_accuracy": best[0],
        "val_accuracy_by_weight_decay": val_acc,
        "n_train": int(ytr.size),
        "n_val": int(yva.size),
        "n_test": int(yte.size),
        "n_test_unseen": int((e_te < 0).sum()),
    }


def group_folds(groups: Sequence, n_folds: int, seed: int) -> np.ndarray:
    """``(N,)`` fold index per item such that items sharing a group share a fold."""
    return stratified_group_folds(groups, None, n_folds, seed)


def stratified_group_folds(
    groups: Sequence, strata: Sequence | None, n_folds: int, seed: int
) -> np.ndarray:
    """``(N,)`` fold index per item: items sharing a group share a fold, and the groups of
    each stratum (e.g. the material groups of one category) are dealt round-robin over the
    folds, so a stratum with at least ``n_folds`` groups is in every fold and, whichever
    fold is held out, in the rest. A group takes the stratum of its first item.
    ``strata=None``: one stratum (plain group-wise folds)."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if uniq.size < n_folds:
        raise ValueError(
            f"need at least {n_folds} distinct groups for {n_folds} folds, got {uniq.size}"
        )
    rng = np.random.default_rng(seed)
    if strata is None:
        stratum_of = dict.fromkeys(uniq.tolist(), "")
    else:
        strata = np.asarray(strata)
        first = {}
        for g, s in zip(groups.tolist(), strata.tolist(), strict=True):
            first.setdefault(g, s)
        stratum_of = first
    fold_of: dict = {}
    offset = int(rng.integers(n_folds))
    for stratum in sorted(set(stratum_of.values())):
        members = np.asarray(sorted(g for g, s in stratum_of.items() if s == stratum))
        for i, g in enumerate(members[rng.permutation(members.size)].tolist()):
            fold_of[g] = (offset + i) % n_folds
        # The next stratum starts where this one stopped: fold sizes stay balanced.
        offset = (offset + members.size) % n_folds
    return np.asarray([fold_of[g] for g in groups.tolist()], dtype=np.int64)


def linear_probe_folds(
    feats: np.ndarray,
    labels: Sequence,
    fold: np.ndarray,
    val: tuple[np.ndarray, Sequence] | None = None,
    **kwargs,
) -> dict:
    """Linear probe with fold rotation: fold ``f`` is the test split in turn.

    With ``val`` (``(feats, labels)`` of a separate val set) the probe fits on every other
    fold and chooses its weight decay on ``val``; without it, fold ``f+1`` chooses the weight
    decay and the rest fits. A fold whose train split has fewer than 2 labels is skipped and
    counted. ``accuracy`` scores the pooled predictions (each item predicted once, by the
    fold that held it out); ``chance`` scores each fold's best constant guess (its train
    split's most frequent label) pooled the same way, or, for balanced accuracy, is 1 / the
    number of classes (what any guess blind to the features gets in expectation); ``folds``
    holds each fold's own scores.
    """
    feats = np.asarray(feats)
    labels = _labels(labels, feats.shape[0], "labels")
    fold = _labels(fold, feats.shape[0], "fold")
    n_folds = int(fold.max()) + 1 if fold.size else 0
    balanced = bool(kwargs.get("balanced", False))
    runs: list[tuple[int, dict]] = []
    guesses: list = []  # each fold's best constant guess: its train split's majority label
    for f in range(n_folds):
        te = fold == f
        if val is None:
            va = fold == (f + 1) % n_folds
            tr = ~(te | va)
            val_split = (feats[va], labels[va])
        else:
            tr = ~te
            val_split = val
        if not te.any() or np.unique(labels[tr]).size < 2:
            continue
        res = linear_probe((feats[tr], labels[tr]), val_split, (feats[te], labels[te]), **kwargs)
        runs.append((f, res))
        values, counts = np.unique(labels[tr], return_counts=True)
        guesses.append(values[int(np.argmax(counts))])
    if not runs:
        return {"accuracy": None, "chance": None, "folds": [], "n_folds_skipped": n_folds}
    # Every item is predicted once, by the fold that holds it out: score the pooled
    # predictions (a fold whose test split holds a single class says little on its own).
    truth = np.concatenate([labels[fold == f] for f, _ in runs])
    pred = np.concatenate([r.pop("predictions") for _, r in runs])
    guess = np.concatenate(
        [np.full(r["n_test"], g, dtype=object) for (_, r), g in zip(runs, guesses, strict=True)]
    )
    # Balanced accuracy: any guess that ignores the features scores 1 / K in expectation.
    chance = 1.0 / np.unique(truth).size if balanced else _score(guess, truth, False)
    return {
        "accuracy": _score(pred.astype(str), truth.astype(str), balanced),
        "chance": float(chance),
        "n_test_unseen": int(sum(r["n_test_unseen"] for _, r in runs)),
        "folds": [r for _, r in runs],
        "n_folds_skipped": n_folds - len(runs),
    }


def linear_probe_by_groups(
    feats: np.ndarray,
    labels: Sequence,
    groups: Sequence,
    n_folds: int = 3,
    seed: int = 0,
    strata: Sequence | None = None,
    **kwargs,
) -> dict:
    """Linear probe with group-wise rotation: fit, val and test never share a group.

    Items are split into ``n_folds`` folds by ``groups`` (``stratified_group_folds``: pass
    ``strata``, e.g. the labels themselves, to deal every label's groups over all folds);
    fold ``f`` is the test split, fold ``f+1`` chooses the weight decay and the rest fits the
    probe. Returns the mean and per-fold test accuracy and chance.
    """
    feats = np.asarray(feats)
    groups = _labels(groups, feats.shape[0], "groups")
    fold = stratified_group_folds(groups, strata, n_folds, seed)
    return linear_probe_folds(feats, labels, fold, **kwargs)


# ----------------------------------------------------------------------------- selection


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
    material = _labels(material, n, "material")
    mesh = _labels(mesh, n, "mesh")
    light = _labels(light, n, "light")
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
