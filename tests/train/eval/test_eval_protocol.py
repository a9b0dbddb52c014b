"""The protocol on small hand-made eval sets whose right answers are known: which views feed
which metric, selection scored over the whole image, and probes that can beat chance."""

from __future__ import annotations

import numpy as np
import pytest

from train.eval import metrics as M
from train.eval.baselines import PixelStats
from train.eval.data import EvalSet, read_eval_set
from train.eval.extractor import Features
from train.eval.protocol import EvalConfig, _selection_inputs, evaluate, roughness_bucket

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class ColourPatches:
    """Patch feature = the mean colour of a 4x4 patch; CLS = the mean colour of the image.
    With one pure colour per material, cosine similarity is 1 within a material, 0 across."""

    def __init__(self, constant: bool = False) -> None:
        self.constant = constant

    def __call__(self, images: np.ndarray, masks: np.ndarray | None) -> Features:
        x = images.astype(np.float32) / 255.0
        b, h, w, _ = x.shape
        patches = x.reshape(b, h // 4, 4, w // 4, 4, 3).mean(axis=(2, 4))
        cls = x.mean(axis=(1, 2))
        if self.constant:
            patches, cls = np.ones_like(patches), np.ones_like(cls)
        return Features(cls=cls, patches=patches)


def _labels(n: int, **values) -> dict:
    base = {
        "key": [f"k{i}" for i in range(n)],
        "view": np.zeros(n, np.int64),
        "material": [f"m{i}" for i in range(n)],
        "category": ["c"] * n,
        "group": [f"g{i}" for i in range(n)],
        "family": [f"f{i}" for i in range(n)],
        "mesh": [f"mesh{i}" for i in range(n)],
        "light": [f"light{i}" for i in range(n)],
    }
    base.update(values)
    return {k: v if k == "view" else np.asarray(v, dtype=str) for k, v in base.items()}


def scene_set(n: int = 4, size: int = 16) -> EvalSet:
    """``n`` scene views: background (index 0, blue) on the top quarter, material 1 (red) on
    the left, material 2 (green) on the right."""
    matid = np.ones((size, size), np.int32)
    matid[:, size // 2 :] = 2
    matid[: size // 4] = 0
    img = np.zeros((size, size, 3), np.uint8)
    for index, colour in ((0, BLUE), (1, RED), (2, GREEN)):
        img[matid == index] = colour
    return EvalSet(
        images=np.stack([img] * n),
        masks=np.stack([matid > 0] * n),
        matids=np.stack([matid] * n),
        scene=np.ones(n, bool),
        **_labels(n),
    )


def test_selection_is_scored_over_the_whole_image():
    es = scene_set()
    good = evaluate(ColourPatches(), es, None, EvalConfig()).metrics["selection"]
    # Each click selects exactly its material: perfect, whatever the threshold's source.
    assert good["iou"] == pytest.approx(1.0) and good["iou_oracle"] == pytest.approx(1.0)
    assert good["n_queries"] > 0
    # Selecting everything: the target (one material, 12 x 8 of 16 x 16 pixels) over the
    # whole image, background included: 0.375, not the 0.5 of scoring object pixels only.
    assert good["iou_select_all"] == pytest.approx(96 / 256)
    # A feature that sees no difference selects the whole image: it scores the floor.
    flat = evaluate(ColourPatches(constant=True), es, None, EvalConfig()).metrics["selection"]
    assert flat["iou"] == pytest.approx(96 / 256)


def test_the_background_is_never_clicked():
    es = scene_set(n=2)
    feats = ColourPatches()(es.images, es.masks)
    rng = np.random.default_rng(0)
    _, _, queries, scored = _selection_inputs(es, np.arange(2), feats, rng, EvalConfig())
    # One click per material (index 0 is the background by the shard contract), and every
    # pixel scored (None: the whole image).
    for view, qs in enumerate(queries):
        assert sorted(int(es.matids[view][y, x]) for y, x in qs) == [1, 2]
    assert scored == [None, None]
    # Told to click every index (and with no object mask), the background becomes a third
    # "material".
    es.masks = None
    _, _, queries, _ = _selection_inputs(
        es, np.arange(2), feats, rng, EvalConfig(matid_ignore=(-1,))
    )
    assert sorted(int(es.matids[0][y, x]) for y, x in queries[0]) == [0, 1, 2]


def test_view_kinds_come_from_the_renderer_metadata():
    es = scene_set(n=3)
    # A scene view in which one material happens to fill the object pixels (a small object
    # hidden at 64 px) is still a scene view, not a material's object view.
    es.matids[1][es.matids[1] == 2] = 1
    m = evaluate(ColourPatches(), es, None, EvalConfig()).metrics
    assert m["counts"]["object_views"] == 0 and m["counts"]["selection_views"] == 3
    # Data that does not mark its scenes: a view is a scene when its map shows 2+ materials
    # (background excluded by default).
    es.scene = None
    m = evaluate(ColourPatches(), es, None, EvalConfig()).metrics
    assert m["counts"]["object_views"] == 1 and m["counts"]["selection_views"] == 2


def test_protocol_on_rendered_like_data(tmp_path, dataset_writer, material_factory):
    mats = [material_factory(i) for i in range(8)]
    sel = {m["id"] for m in mats[6:]}
    d = dataset_writer(
        tmp_path / "ev", mats, ["a", "b", "c"], ["x", "y"], views=3, size=32, selection=sel
    )
    es = read_eval_set(str(d))
    full = evaluate(PixelStats(4), es, None, EvalConfig(probe_group="material"))
    m = full.metrics
    assert m["counts"] == {
        "views": 24,
        "object_views": 18,
        "selection_views": 6,
        "scenes": 2,
        "materials": 6,
    }
    assert m["retrieval"]["n_queries"] + m["retrieval"]["n_excluded"] == 18
    # The object-mask readout is scored on the same queries as the CLS feature.
    assert m["retrieval_masked"]["n_queries"] == m["retrieval"]["n_queries"]
    assert m["selection"]["threshold_from"].startswith("eval set")
    assert full.figures["pca_patches"].shape[1:3] == (8, 8)
    only_sel = evaluate(PixelStats(4), es.subset(es.has_matid()), None, EvalConfig()).metrics
    assert "retrieval" not in only_sel and only_sel["counts"]["object_views"] == 0


def probe_set(seed: int = 0) -> EvalSet:
    """48 object views: 4 categories x 4 groups x 3 views; the colour says the category (plus
    noise); red and blue are metal (low green), green and blue are rough (low red): both
    linearly separable. Families are the groups, so a family-held-out probe never sees the
    test group's family."""
    rng = np.random.default_rng(seed)
    colours = np.array([RED, GREEN, BLUE, (255, 255, 0)], np.float64)
    images, labels = [], {k: [] for k in ("material", "category", "group", "family")}
    metallic, roughness = [], []
    for c in range(4):
        for g in range(4):
            for _ in range(3):
                noise = rng.normal(0, 12, 3)
                images.append(np.clip(colours[c] * 0.8 + 20 + noise, 0, 255))
                labels["material"].append(f"m{c}-{g}")
                labels["category"].append(f"cat{c}")
                labels["group"].append(f"grp{c}-{g}")
                labels["family"].append(f"fam{c}-{g}")
                metallic.append(1.0 if c in (0, 2) else 0.0)
                roughness.append(0.8 if c in (1, 2) else 0.1)
    n = len(images)
    img = np.broadcast_to(np.asarray(images)[:, None, None, :], (n, 8, 8, 3)).astype(np.uint8)
    return EvalSet(
        images=np.ascontiguousarray(img),
        masks=None,
        matids=None,
        roughness=np.asarray(roughness),
        metallic=np.asarray(metallic),
        **_labels(n, **labels),
    )


def test_probes_can_beat_their_chance():
    es = probe_set()
    m = evaluate(ColourPatches(), es, None, EvalConfig()).metrics
    cat = m["linear_probe"]
    # Every category's 4 groups are dealt over the 3 folds: no test category is unseen, and
    # a feature that knows the category is right; the best constant guess is 1 in 4 or so.
    assert cat["n_test_unseen"] == 0 and cat["accuracy"] == pytest.approx(1.0)
    assert 0.15 < cat["chance"] < 0.4
    for name in ("probe_metal", "probe_roughness"):
        probe = m[name]
        assert probe["folds_by"] == "family" and probe["score"] == "balanced accuracy"
        assert probe["accuracy"] == pytest.approx(1.0)
        assert probe["chance"] == pytest.approx(0.5)  # a constant guess: 1 of 2 classes
    # A feature that knows nothing scores its chance.
    blind = evaluate(ColourPatches(constant=True), es, None, EvalConfig()).metrics
    assert blind["probe_metal"]["accuracy"] == pytest.approx(0.5)


def test_stratified_group_folds_deal_every_label_over_every_fold():
    groups = [f"{c}-{g}" for c in "abcde" for g in range(4) for _ in range(2)]
    strata = [g[0] for g in groups]
    fold = M.stratified_group_folds(groups, strata, 3, seed=1)
    for g in set(groups):
        assert np.unique(fold[np.asarray(groups) == g]).size == 1  # a group stays together
    for c in "abcde":
        assert set(fold[np.asarray(strata) == c].tolist()) == {0, 1, 2}
    # Fold sizes differ by at most one group of 2.
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= 2


def test_roughness_buckets():
    got = roughness_bucket(np.array([0.0, 0.29, 0.3, 0.59, 0.6, 1.0, np.nan]), (0.3, 0.6))
    assert got.tolist() == ["glossy", "glossy", "medium", "medium", "rough", "rough", ""]
