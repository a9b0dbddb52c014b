"""Metrics on synthetic features whose answer is known: perfect, shuffled, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train.eval import metrics as M


def _scene(n_mat: int = 30, views: int = 6, n_mesh: int = 7, n_light: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    material = np.repeat(np.arange(n_mat), views)
    mesh = rng.integers(0, n_mesh, material.size)
    light = rng.integers(0, n_light, material.size)
    return rng, material, mesh, light


def _perfect(material: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    onehot = np.eye(material.max() + 1)[material]
    return onehot + noise * rng.standard_normal(onehot.shape)


def _sd(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------- retrieval


def test_average_precision_by_hand():
    assert M.average_precision(np.array([1, 0, 1], bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert M.average_precision(np.array([0, 0, 1], bool)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        M.average_precision(np.zeros(3, bool))


def test_retrieval_perfect_features():
    rng, material, mesh, light = _scene()
    res = M.cross_retrieval(_perfect(material, rng), material, mesh, light)
    m = res.metrics()
    assert m["recall@1"] == 1.0 and m["recall@5"] == 1.0 and m["map"] == pytest.approx(1.0)
    assert m["n_queries"] + m["n_excluded"] == material.size
    assert m["n_queries"] > 0.8 * material.size
    # every gallery item shares neither mesh nor light with its query
    for q, top in zip(res.queries, res.topk, strict=True):
        top = top[top >= 0]
        assert np.all(mesh[top] != mesh[q]) and np.all(light[top] != light[q])


def test_retrieval_shuffled_labels_is_chance():
    rng, material, mesh, light = _scene(n_mat=40, views=8)
    feats = _perfect(rng.permutation(material), rng, noise=0.3)
    m = M.cross_retrieval(feats, material, mesh, light).metrics()
    chance = m["chance_recall@1"]
    assert 0 < chance < 0.1
    assert abs(m["recall@1"] - chance) < 4 * _sd(chance, m["n_queries"]) + 0.01
    assert m["map"] < 0.2


def test_retrieval_query_without_gallery_is_excluded_not_nan():
    material = np.array([0, 0, 1, 1, 2, 2])
    mesh = np.array([0, 0, 1, 2, 3, 4])  # material 0: both views share a mesh
    light = np.array([0, 1, 1, 2, 3, 4])
    feats = np.eye(3)[material]
    m = M.cross_retrieval(feats, material, mesh, light).metrics()
    assert m["n_excluded"] == 2 and m["n_queries"] == 4
    assert m["recall@1"] == 1.0 and not math.isnan(m["map"])
    empty = M.cross_retrieval(feats, material, np.zeros(6), light).metrics()
    assert empty["n_queries"] == 0 and empty["n_excluded"] == 6 and empty["recall@1"] is None


def test_same_colour_variant_defeats_colour_features():
    rng, material, mesh, light = _scene(n_mat=40, views=6)
    # Materials 2k and 2k+1 share a base colour: colour alone can't tell them apart.
    base = rng.uniform(0, 1, (20, 3))
    colour = base[material // 2] + 0.002 * rng.standard_normal((material.size, 3))
    feats = colour - 0.5
    plain = M.cross_retrieval(feats, material, mesh, light).metrics()
    hard = M.cross_retrieval(feats, material, mesh, light, colour=colour, n_negatives=5).metrics()
    assert hard["mean_gallery_size"] < plain["mean_gallery_size"]
    assert hard["chance_recall@1"] > plain["chance_recall@1"]
    # colour features are near chance on the hard variant; material features are perfect
    assert hard["recall@1"] < hard["chance_recall@1"] + 0.2
    perfect = M.cross_retrieval(
        _perfect(material, rng), material, mesh, light, colour=colour, n_negatives=5
    ).metrics()
    assert perfect["recall@1"] == 1.0 and perfect["map"] == pytest.approx(1.0)


def test_retrieval_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mesh"):
        M.cross_retrieval(np.zeros((4, 2)), [0, 0, 1, 1], [0, 1], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="n_negatives"):
        M.cross_retrieval(np.zeros((2, 2)), [0, 0], [0, 1], [0, 1], colour=np.zeros((2, 3)))


# ----------------------------------------------------------------------------- k-NN


def test_knn_perfect_and_shuffled():
    rng = np.random.default_rng(1)
    n_cat, per_cat, views = 4, 10, 4
    material = np.repeat(np.arange(n_cat * per_cat), views)
    category = material // per_cat
    feats = np.eye(n_cat)[category] + 0.05 * rng.standard_normal((material.size, n_cat))
    m = M.knn_accuracy(feats, category, material)
    assert m["knn@10"] == 1.0 and m["knn@20"] == 1.0 and m["n_excluded"] == 0
    shuffled = rng.permutation(per_cat * n_cat)[material] // per_cat  # category per material
    r = M.knn_accuracy(feats, shuffled, material)
    assert abs(r["knn@20"] - 0.25) < 4 * _sd(0.25, per_cat * n_cat) + 0.02


def test_knn_leaves_own_material_out():
    # Only the query's own other views are close; other materials of its category are far.
    material = np.array([0, 0, 1, 1, 2, 2])
    category = np.array([0, 0, 0, 0, 1, 1])
    feats = np.array([[1, 0], [1, 0.01], [0, 1], [0, 1], [1, 0.02], [1, 0.03]], float)
    m = M.knn_accuracy(feats, category, material, ks=(1,))
    # every view's nearest admissible neighbour has the other category: the own-material
    # views, which would have answered right, are never used
    assert m["knn@1"] == 0.0


def test_knn_temperature_weighting_matches_reference():
    # Query 0: two far neighbours of class 1, one close neighbour of class 2.
    feats = np.array([[1, 0], [0.2, 1], [0.2, 1.1], [1, 0.05]], float)
    material = np.arange(4)
    category = np.array([2, 1, 1, 2])
    sharp = M.knn_accuracy(feats[:, :], category, material, ks=(3,), temperature=0.05)
    flat = M.knn_accuracy(feats, category, material, ks=(3,), temperature=100.0)
    sims = M.cosine_matrix(feats)[0, 1:]
    w = np.exp(sims / 0.05)
    assert w[2] > w[0] + w[1]  # reference: class 2 wins for query 0 at low temperature

    def reference(temperature: float) -> float:
        """Weighted 3-NN written out: every other view is admissible (materials differ)."""
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        right = 0
        for i in range(4):
            others = [j for j in range(4) if j != i]
            nearest = sorted(others, key=lambda j: -unit[i] @ unit[j])[:3]
            votes: dict[int, float] = {}
            for j in nearest:
                votes[category[j]] = votes.get(category[j], 0.0) + np.exp(
                    unit[i] @ unit[j] / temperature
                )
            right += max(votes, key=votes.get) == category[i]
        return right / 4

    # Sharp: every query follows its one close same-class neighbour: all right. Flat: the
    # other class holds two of each query's three neighbours and outvotes it: all wrong.
    assert sharp["knn@3"] == reference(0.05) == 1.0
    assert flat["knn@3"] == reference(100.0) == 0.0


def test_knn_no_admissible_neighbour():
    m = M.knn_accuracy(np.eye(3), [0, 1, 2], [5, 5, 5])
    assert m["n_excluded"] == 3 and m["knn@10"] is None


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 360)
    x = np.eye(3)[y] * 3 + rng.standard_normal((360, 3)) * 0.3
    x = np.concatenate([x, rng.standard_normal((360, 5))], 1)
    split = (slice(0, 200), slice(200, 280), slice(280, 360))
    res = M.linear_probe(*[(x[s], y[s]) for s in split])
    assert res["accuracy"] == 1.0 and res["n_test_unseen"] == 0
    assert set(res["val_accuracy_by_weight_decay"]) == {"1e-05", "0.0001", "0.001", "0.01", "0.1"}
    y_rand = rng.integers(0, 3, 360)
    rand = M.linear_probe(*[(x[s], y_rand[s]) for s in split])
    assert abs(rand["accuracy"] - 1 / 3) < 4 * _sd(1 / 3, 80)


def test_linear_probe_by_groups_never_mixes_groups():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), 10)
    labels = groups % 3
    feats = np.eye(3)[labels] + 0.1 * rng.standard_normal((120, 3))
    folds = M.group_folds(groups, 3, seed=0)
    for g in range(12):
        assert np.unique(folds[groups == g]).size == 1
    res = M.linear_probe_by_groups(feats, labels, groups, n_folds=3, seed=0)
    assert len(res["folds"]) + res["n_folds_skipped"] == 3 and res["folds"]
    for fold in res["folds"]:  # every item whose label the fold saw in training is right
        n_seen = fold["n_test"] - fold["n_test_unseen"]
        assert fold["accuracy"] * fold["n_test"] == pytest.approx(n_seen)
    with pytest.raises(ValueError, match="distinct groups"):
        M.group_folds([0, 0, 1], 3, seed=0)


# ----------------------------------------------------------------------------- selection


def _patch_scene(rng: np.random.Generator, h: int = 8, w: int = 8, p: int = 4, n_mat: int = 3):
    """A matid map aligned with the patch grid, and perfect one-hot patch features."""
    patch_ids = rng.integers(0, n_mat, (h, w))
    matid = np.kron(patch_ids, np.ones((p, p), int))
    feats = np.eye(n_mat)[patch_ids] + 0.01 * rng.standard_normal((h, w, n_mat))
    return matid, feats


@pytest.mark.parametrize("p, upsample", [(1, "bilinear"), (4, "nearest")])
def test_selection_perfect_features_iou_one(p: int, upsample: str):
    rng = np.random.default_rng(4)
    val = [_patch_scene(rng, p=p) for _ in range(3)]
    test = [_patch_scene(rng, p=p) for _ in range(3)]
    q_val = [M.sample_queries(m, rng, min_pixels=1) for m, _ in val]
    sims, tgts, vals = M.selection_maps(
        [f for _, f in val], [m for m, _ in val], q_val, upsample=upsample
    )
    thr, curve = M.choose_threshold(sims, tgts, vals)
    assert curve.max() == pytest.approx(1.0) and 0.05 < thr <= 0.95
    q_test = [M.sample_queries(m, rng, min_pixels=1) for m, _ in test]
    feats, mats = [f for _, f in test], [m for m, _ in test]
    res = M.material_selection(feats, mats, q_test, thr, upsample=upsample)
    assert res["iou"] == pytest.approx(1.0) and res["f1"] == pytest.approx(1.0)
    assert res["l1"] < 0.05 and res["n_queries"] >= 3


def test_selection_bilinear_on_coarse_patches_is_close_to_perfect():
    # Bilinear upsampling blurs patch corners: near 1, not exactly 1.
    rng = np.random.default_rng(6)
    scenes = [_patch_scene(rng) for _ in range(4)]
    qs = [M.sample_queries(m, rng) for m, _ in scenes]
    res = M.material_selection([f for _, f in scenes], [m for m, _ in scenes], qs, 0.5)
    assert 0.85 < res["iou"] < 1.0


def test_selection_random_features_are_poor():
    rng = np.random.default_rng(5)
    scenes = [_patch_scene(rng) for _ in range(4)]
    feats = [rng.standard_normal(f.shape[:2] + (16,)) for _, f in scenes]
    qs = [M.sample_queries(m, rng) for m, _ in scenes]
    res = M.material_selection(feats, [m for m, _ in scenes], qs, threshold=0.5)
    assert res["iou"] < 0.5


def test_selection_scores_by_hand_and_valid_mask():
    sim = np.array([[0.9, 0.2], [0.8, -0.5]])
    target = np.array([[1, 1], [0, 0]], bool)
    s = M.selection_scores(sim, target, threshold=0.5)
    assert s["iou"] == pytest.approx(1 / 3) and s["f1"] == pytest.approx(0.5)
    assert s["l1"] == pytest.approx((0.1 + 0.8 + 0.8 + 0.0) / 4)
    valid = np.array([[1, 1], [0, 1]], bool)
    assert M.selection_scores(sim, target, 0.5, valid)["iou"] == pytest.approx(0.5)


def test_sample_queries_skips_small_regions_and_images_without_queries_are_counted():
    matid = np.zeros((16, 16), int)
    matid[:2, :2] = 1  # 4 pixels: below min_pixels
    qs = M.sample_queries(matid, np.random.default_rng(0), min_pixels=16)
    assert len(qs) == 1 and matid[qs[0]] == 0
    res = M.material_selection([np.ones((4, 4, 2))], [matid], [[]], threshold=0.5)
    assert res["n_excluded"] == 1 and res["n_queries"] == 0 and res["iou"] is None


def test_similarity_map_upsamples_to_image():
    feats = np.zeros((2, 2, 2))
    feats[:, 0, 0] = 1
    feats[:, 1, 1] = 1
    sim = M.similarity_map(feats, (0, 0), (8, 8))
    assert sim.shape == (8, 8) and sim[:, :4].min() > 0.5 and sim[:, 4:].max() < 0.5
    with pytest.raises(ValueError, match="outside"):
        M.similarity_map(feats, (9, 0), (8, 8))


# ----------------------------------------------------------------------------- invariance


def test_invariance_perfect_and_empty():
    rng, material, mesh, light = _scene(n_mat=10, views=4, n_mesh=2, n_light=2)
    inv = M.invariance(_perfect(material, rng, noise=0.0), material, mesh, light)
    assert inv["intra"] == pytest.approx(0.0, abs=1e-6) and inv["inter"] == pytest.approx(1.0)
    assert inv["ratio"] == pytest.approx(0.0, abs=1e-6) and inv["n_inter_pairs"] > 0
    none = M.invariance(np.eye(3), [0, 1, 2], [0, 1, 2], [0, 0, 0])
    assert none["intra"] is None and none["inter"] is None and none["ratio"] is None


def test_invariance_of_collapsed_features_is_not_a_ratio_of_noise():
    rng, material, mesh, light = _scene(n_mat=6, views=4, n_mesh=2, n_light=2)
    feats = np.ones((material.size, 8)) + 1e-9 * rng.standard_normal((material.size, 8))
    inv = M.invariance(feats, material, mesh, light)
    assert inv["intra"] >= 0 and inv["inter"] >= 0 and inv["ratio"] is None


def test_mask_pool_weights_patches_by_object_cover():
    patches = np.zeros((2, 2, 2, 3), np.float32)
    patches[:, 0, 0] = [1, 0, 0]  # object patch
    patches[:, 1, 1] = [0, 0, 9]  # background patch
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = True  # view 0: the object covers exactly patch (0, 0)
    masks[0, :2, 4:8] = True  # ... and half of patch (0, 1), whose feature is 0
    pooled = M.mask_pool(patches, masks)
    np.testing.assert_allclose(pooled[0], [1 / 1.5, 0, 0], rtol=1e-6)
    # View 1 has no object pixels: the plain mean over all four patches.
    np.testing.assert_allclose(pooled[1], [0.25, 0, 2.25], rtol=1e-6)
    np.testing.assert_allclose(M.mask_pool(patches, None), pooled[1:].repeat(2, 0), rtol=1e-6)
    with pytest.raises(ValueError, match="patch grid"):
        M.mask_pool(patches, np.ones((2, 7, 7), bool))


def test_selection_floors_select_all_and_oracle():
    target = np.zeros((4, 4), bool)
    target[:, :2] = True  # half the image
    sim = np.where(target, 0.8, 0.2).astype(np.float32)  # a perfect map
    flipped = 1.0 - sim  # the wrong half scores higher: no threshold selects the target
    floors = M.selection_floors([sim, flipped], [target, target])
    assert floors["iou_select_all"] == pytest.approx(0.5)
    # The perfect map reaches IoU 1 at its best threshold; the flipped one at best selects
    # everything (IoU 0.5).
    assert floors["iou_oracle"] == pytest.approx(0.75)
    assert M.selection_floors([], []) == {"iou_select_all": None, "iou_oracle": None}
