"""Linear probes on frozen features: an L-BFGS logistic regression whose weight decay is
chosen on a separate split, the group-wise (and stratified) folds that keep material groups
apart, and the fold rotation that scores every item once.

Part of ``train.eval.metrics`` (shapes and conventions in its docstring); builds on
``train.eval.metrics.common``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from train.eval.metrics.common import check_labels


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
    labels = check_labels(labels, feats.shape[0], "labels")
    fold = check_labels(fold, feats.shape[0], "fold")
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
    groups = check_labels(groups, feats.shape[0], "groups")
    fold = stratified_group_folds(groups, strata, n_folds, seed)
    return linear_probe_folds(feats, labels, fold, **kwargs)
