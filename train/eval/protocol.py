"""The evaluation protocol: one model, one held-out eval set -> every metric, plus the few
arrays the report draws.

Views are of two kinds, as the renderer recorded them (a sample whose json lists
``scene_materials`` is a multi-object scene). *Object views* show one material on one mesh
under one light: they feed retrieval, k-NN, the linear probes and invariance, using the CLS
feature. *Selection views* (the views of a scene, with a ``matid`` map) feed material
selection, using patch features: a click on one object's pixel should select every pixel of
that material and nothing else, the background and the other materials included. For data
that does not mark its scenes, a view whose ``matid`` map shows two or more materials is a
selection view. Index 0 of a ``matid`` map is the background (``phieat.schema``). Selection
views rendered larger than the object views (a spec's ``[scenes].resolution``;
``EvalSet.native``) are scored at their rendered size: their patch features come from the
image at that size (``features.extract_native``), so a 256 px scene gives a ViT of patch 16
a 16 x 16 grid where a 64 px one gives 4 x 4.

Three linear probes read the CLS feature: the material's category, with folds split by
material group and every category dealt over all folds (so each test category is seen in
training); and two that hold whole families out and predict what transfers across families,
a roughness bucket and metal vs dielectric, scored by balanced accuracy. Each reports its
chance level (the best constant guess the training fold allows).

Thresholds and probe hyper-parameters come from the val set when one is given
(``--val-data``); otherwise from a group-disjoint part of the eval set itself, and the
metrics say so.

Example::

    from train.eval.protocol import EvalConfig, evaluate
    result = evaluate(extractor, eval_set, val_set=None, cfg=EvalConfig())
    result.metrics["retrieval"]["recall@1"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from phieat import schema
from train.eval import metrics as M
from train.eval.data import EvalSet
from train.eval.extractor import Extractor, Features
from train.eval.features import extract_all, extract_native

logger = logging.getLogger("phieat.train")

# Bumped whenever a metric's definition changes; a report never mixes results of two versions.
PROTOCOL_VERSION = 2


@dataclass
class EvalConfig:
    """Knobs of the protocol (all saved in every metrics file)."""

    seed: int = 0
    batch_size: int = 32
    ks: tuple[int, ...] = (1, 5)
    n_negatives: int = 10  # same-colour variant: wrong gallery items kept per query
    knn_ks: tuple[int, ...] = (10, 20)
    knn_temperature: float = 0.07
    probe_folds: int = 3
    probe_group: str = "group"  # category probe folds: "family" | "group" | "material"
    roughness_bins: tuple[float, ...] = (0.3, 0.6)  # roughness probe: glossy | medium | rough
    metal_threshold: float = 0.5  # metal probe: params.metallic >= this is "metal"
    queries_per_region: int = 1
    min_region_pixels: int = 16
    upsample: str = "bilinear"
    # Material indices that are not a material: index 0 is the background of every matid map
    # the renderer writes (phieat.schema.MATID_BACKGROUND).
    matid_ignore: tuple[int, ...] = (schema.MATID_BACKGROUND,)
    max_selection_views: int = 200
    # Scene views rendered larger than the object views: 0 = one forward pass over the whole
    # scene at its size; N = in N x N pixel tiles stitched into one patch grid
    # (``features.extract_native``).
    selection_tile: int = 0
    n_figure_queries: int = 6


@dataclass
class EvalResult:
    """``metrics``: JSON-ready dict. ``figures``: arrays for the report (see ``figure_data``)."""

    metrics: dict
    figures: dict = field(default_factory=dict)


def _is_scene(es: EvalSet, cfg: EvalConfig) -> np.ndarray:
    """``(N,)`` bool: views of multi-object scenes, as recorded by the renderer; for data
    that records none, views whose matid map shows two or more materials."""
    if es.scene is not None:
        return es.scene
    return es.material_regions(cfg.matid_ignore) >= 2


def _object_views(es: EvalSet, cfg: EvalConfig) -> np.ndarray:
    """Views of one material on one object."""
    return np.flatnonzero(~_is_scene(es, cfg))


def _selection_views(es: EvalSet, cfg: EvalConfig) -> np.ndarray:
    """Scene views with a matid map."""
    idx = np.flatnonzero(_is_scene(es, cfg) & es.has_matid())
    return idx[: cfg.max_selection_views]


def _selection_features(
    extractor: Extractor, es: EvalSet, idx: np.ndarray, cfg: EvalConfig
) -> list[np.ndarray]:
    """Patch features ``(h, w, D)`` of the selection views ``idx``, each at the size it is
    scored at: views kept at their rendered size (``EvalSet.native``) are extracted at that
    size (``extract_native``), a batch per size; the others as ``images`` holds them."""
    if not es.native:
        masks = es.masks[idx] if es.masks is not None else None
        return list(extract_all(extractor, es.images[idx], masks, cfg.batch_size).patches)
    out: list[np.ndarray | None] = [None] * idx.size
    groups: dict[tuple[int, int] | None, list[int]] = {}
    for row, i in enumerate(idx):
        view = es.native[i]
        groups.setdefault(None if view is None else view.image.shape[:2], []).append(row)
    for shape, rows in groups.items():
        views = idx[rows]
        if shape is None:
            masks = es.masks[views] if es.masks is not None else None
            patches = extract_all(extractor, es.images[views], masks, cfg.batch_size).patches
        else:
            native = [es.native[i] for i in views]
            images = np.stack([v.image for v in native])
            masks = None
            if all(v.mask is not None for v in native):
                masks = np.stack([v.mask for v in native])
            patches = extract_native(
                extractor, images, masks, cfg.batch_size, cfg.selection_tile
            ).patches
        for row, patch in zip(rows, patches, strict=True):
            out[row] = patch
    return out  # type: ignore[return-value]


def _selection_inputs(
    es: EvalSet,
    idx: np.ndarray,
    patch_feats: Features | Sequence[np.ndarray],
    rng: np.random.Generator,
    cfg: EvalConfig,
) -> tuple[list, list, list, list]:
    """Per view: patch features, matid map, query pixels, and the pixels that are scored.

    Queries are drawn on objects only (a material index that is not ignored, inside the
    mask); every pixel with a material index is scored, so the background and the other
    materials count as "not selected" and selecting the whole image is no good answer.
    Views kept at their rendered size are scored at that size (``EvalSet.view_arrays``).
    ``patch_feats``: the views' ``Features``, or their patch features one per view.
    """
    if isinstance(patch_feats, Features):
        patch_feats = patch_feats.patches
    patches, matids, queries, valids = [], [], [], []
    for row, i in enumerate(idx):
        view = es.view_arrays(int(i))
        matid = np.full(view.image.shape[:2], -1, np.int32) if view.matid is None else view.matid
        scored = matid >= 0
        clickable = scored & ~np.isin(matid, cfg.matid_ignore)
        if view.mask is not None:
            clickable &= view.mask
        qs = M.sample_queries(matid, rng, clickable, cfg.queries_per_region, cfg.min_region_pixels)
        patches.append(patch_feats[row])
        matids.append(matid)
        queries.append(qs)
        valids.append(None if scored.all() else scored)
    return patches, matids, queries, valids


def evaluate(
    extractor: Extractor, eval_set: EvalSet, val_set: EvalSet | None, cfg: EvalConfig
) -> EvalResult:
    """Every metric of one model on ``eval_set`` (see the module docstring)."""
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    out: dict = {"protocol_version": PROTOCOL_VERSION, "config": asdict(cfg), "counts": {}}
    figures: dict = {}
    es = eval_set
    obj = _object_views(es, cfg)
    sel = _selection_views(es, cfg)
    out["counts"] = {
        "views": len(es),
        "object_views": int(obj.size),
        "selection_views": int(sel.size),
        "scenes": int(np.unique(es.key[sel]).size) if sel.size else 0,
        "materials": int(np.unique(es.material[obj]).size) if obj.size else 0,
    }

    if obj.size:
        masks = es.masks[obj] if es.masks is not None else None
        t0 = time.perf_counter()
        feats = extract_all(extractor, es.images[obj], masks, cfg.batch_size)
        out["timing"] = {"extract_object_views_s": time.perf_counter() - t0}
        cls = feats.cls
        mat, mesh, light = es.material[obj], es.mesh[obj], es.light[obj]
        res = M.cross_retrieval(cls, mat, mesh, light, ks=cfg.ks)
        out["retrieval"] = res.metrics()
        # The object-mask readout (mean patch feature on the object), reported beside the CLS
        # numbers, never instead of them: what the features know once the background is out.
        pooled = M.mask_pool(feats.patches, _grid_masks(masks, feats.patches.shape[1:3]))
        out["retrieval_masked"] = M.cross_retrieval(pooled, mat, mesh, light, ks=cfg.ks).metrics()
        colour = es.mean_colour()[obj]
        hard = M.cross_retrieval(
            cls, mat, mesh, light, ks=cfg.ks, colour=colour, n_negatives=cfg.n_negatives
        )
        out["retrieval_same_colour"] = hard.metrics()
        knn = M.knn_accuracy(
            cls, es.category[obj], mat, ks=cfg.knn_ks, temperature=cfg.knn_temperature
        )
        knn_family = M.knn_accuracy(
            cls,
            es.category[obj],
            mat,
            ks=cfg.knn_ks,
            temperature=cfg.knn_temperature,
            exclude=es.family[obj],
        )
        out["knn"] = knn
        out["knn_family_out"] = knn_family
        out.update(_probes(cls, es, obj, val_set, extractor, cfg))
        out["invariance"] = M.invariance(cls, mat, mesh, light)
        figures.update(_retrieval_figure(res, obj, rng, cfg))
        figures["pca_views"] = obj[_spread(rng, obj.size, 6)]
        figures["pca_patches"] = feats.patches[np.searchsorted(obj, figures["pca_views"])]
    else:
        logger.warning("eval set has no object views: retrieval, k-NN, probe skipped")

    if sel.size:
        t0 = time.perf_counter()
        spatches = _selection_features(extractor, es, sel, cfg)
        out.setdefault("timing", {})["extract_selection_views_s"] = time.perf_counter() - t0
        out["selection"] = _selection(es, sel, spatches, val_set, extractor, rng, cfg, figures)
    else:
        logger.warning("eval set has no views with a matid map: material selection skipped")
    out.setdefault("timing", {})["total_s"] = time.perf_counter() - started
    return EvalResult(metrics=out, figures=figures)


def _grid_masks(masks: np.ndarray | None, grid: tuple[int, int]) -> np.ndarray | None:
    """Object masks resized (nearest) to a multiple of the patch grid, for ``mask_pool``."""
    if masks is None:
        return None
    h, w = grid
    big_h, big_w = masks.shape[1:]
    if big_h % h == 0 and big_w % w == 0:
        return masks
    rows = (np.arange(h * 8) * big_h // (h * 8)).clip(0, big_h - 1)
    cols = (np.arange(w * 8) * big_w // (w * 8)).clip(0, big_w - 1)
    return masks[:, rows][:, :, cols]


def _spread(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def _retrieval_figure(
    res: M.RetrievalResult, obj: np.ndarray, rng: np.random.Generator, cfg: EvalConfig
) -> dict:
    """Query/top-k rows for the grid: indices into the eval set's views."""
    if not res.queries.size:
        return {}
    pick = _spread(rng, res.queries.size, cfg.n_figure_queries)
    top = res.topk[pick]
    return {
        "retrieval_query": obj[res.queries[pick]],
        "retrieval_topk": np.where(top >= 0, obj[np.maximum(top, 0)], -1),
        "retrieval_correct": res.correct[pick],
    }


def _probe_groups(es: EvalSet, idx: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    if cfg.probe_group not in ("family", "group", "material"):
        raise ValueError(f"probe_group must be family, group or material, got {cfg.probe_group!r}")
    return getattr(es, cfg.probe_group)[idx]


def roughness_bucket(roughness: np.ndarray, bins: tuple[float, ...]) -> np.ndarray:
    """``(N,)`` str: "glossy" / "medium" / "rough" (two bins; otherwise "r0", "r1", ...);
    "" where the material has no roughness parameter."""
    names = ("glossy", "medium", "rough") if len(bins) == 2 else None
    idx = np.digitize(np.nan_to_num(roughness, nan=0.0), bins)
    out = np.asarray([names[i] if names else f"r{i}" for i in idx], dtype=object)
    out[~np.isfinite(roughness)] = ""
    return out.astype(str)


def _probe_labels(es: EvalSet, idx: np.ndarray, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Labels of the three probes on views ``idx`` ("" = no label: left out)."""
    n = idx.size
    rough = es.roughness[idx] if es.roughness is not None else np.full(n, np.nan)
    metallic = es.metallic[idx] if es.metallic is not None else np.zeros(n)
    return {
        "linear_probe": es.category[idx],
        "probe_roughness": roughness_bucket(rough, cfg.roughness_bins),
        "probe_metal": np.where(metallic >= cfg.metal_threshold, "metal", "dielectric"),
    }


PROBES = {
    # name: (what it predicts, folds never share this label, stratified by the label,
    #        balanced accuracy)
    "linear_probe": ("category", None, True, False),
    "probe_roughness": ("roughness bucket", "family", False, True),
    "probe_metal": ("metal vs dielectric", "family", False, True),
}


def _probes(
    cls: np.ndarray,
    es: EvalSet,
    obj: np.ndarray,
    val_set: EvalSet | None,
    extractor: Extractor,
    cfg: EvalConfig,
) -> dict:
    """The three linear probes (module docstring), each with its chance level."""
    labels = _probe_labels(es, obj, cfg)
    val_obj = _object_views(val_set, cfg) if val_set is not None else np.zeros(0, int)
    val_cls = None
    if val_obj.size:
        val_cls = extract_all(
            extractor,
            val_set.images[val_obj],
            val_set.masks[val_obj] if val_set.masks is not None else None,
            cfg.batch_size,
        ).cls
        val_labels = _probe_labels(val_set, val_obj, cfg)
    out = {}
    for name, (task, by, stratified, balanced) in PROBES.items():
        groups = getattr(es, by)[obj] if by else _probe_groups(es, obj, cfg)
        keep = labels[name] != ""
        y, g = labels[name][keep], groups[keep]
        info = {
            "task": task,
            "folds_by": by or cfg.probe_group,
            "score": "balanced accuracy" if balanced else "accuracy",
        }
        if np.unique(g).size < cfg.probe_folds or np.unique(y).size < 2:
            out[name] = {"accuracy": None, "skipped": "too few groups or labels", **info}
            continue
        fold = M.stratified_group_folds(g, y if stratified else None, cfg.probe_folds, cfg.seed)
        val = None
        if val_cls is not None:
            vkeep = val_labels[name] != ""
            if np.unique(val_labels[name][vkeep]).size >= 2:
                val = (val_cls[vkeep], val_labels[name][vkeep])
        res = M.linear_probe_folds(cls[keep], y, fold, val=val, balanced=balanced)
        res["hyperparameters_from"] = "val set" if val is not None else "eval set (a held-out fold)"
        out[name] = {**res, **info, "n_labelled": int(keep.sum())}
    return out


def _selection(
    es: EvalSet,
    sel: np.ndarray,
    sel_patches: list[np.ndarray],
    val_set: EvalSet | None,
    extractor: Extractor,
    rng: np.random.Generator,
    cfg: EvalConfig,
    figures: dict,
) -> dict:
    """Threshold on val (or on half the eval scenes, split by material group), score the rest."""
    patches, matids, queries, valids = _selection_inputs(es, sel, sel_patches, rng, cfg)
    val_sel = _selection_views(val_set, cfg) if val_set is not None else np.zeros(0, int)
    if val_sel.size:
        vpatches = _selection_features(extractor, val_set, val_sel, cfg)
        v_inputs = _selection_inputs(val_set, val_sel, vpatches, rng, cfg)
        test_rows = np.arange(sel.size)
        source = "val set"
    else:
        if np.unique(es.group[sel]).size < 2:
            return {"iou": None, "skipped": "needs --val-data or 2+ material groups of scenes"}
        fold = M.group_folds(es.group[sel], 2, cfg.seed)
        v_rows, test_rows = np.flatnonzero(fold == 1), np.flatnonzero(fold == 0)
        v_inputs = tuple([x[r] for r in v_rows] for x in (patches, matids, queries, valids))
        source = "eval set (a group-disjoint half, not scored)"
    v_patches, v_matids, v_queries, v_valids = v_inputs
    sims, tgts, vals = M.selection_maps(v_patches, v_matids, v_queries, v_valids, cfg.upsample)
    if not sims:
        return {"iou": None, "skipped": "no selection queries to choose a threshold on"}
    threshold, curve = M.choose_threshold(sims, tgts, vals)
    pick = [list(x[r] for r in test_rows) for x in (patches, matids, queries, valids)]
    res = M.material_selection(pick[0], pick[1], pick[2], threshold, pick[3], cfg.upsample)
    res.update(M.selection_floors(*M.selection_maps(*pick, cfg.upsample)))
    res["threshold_from"] = source
    res["threshold_val_iou"] = float(curve.max())
    if es.native:
        # Scored at the rendered size of the scenes: say which, and the patch grid it gave.
        res["native_size"] = {
            "image_size": [list(s) for s in sorted({matids[r].shape for r in test_rows})],
            "patch_grid": [list(s) for s in sorted({patches[r].shape[:2] for r in test_rows})],
        }
    # A few maps for the report: (view index, query pixel, similarity map).
    with_q = [r for r in test_rows if queries[r]]
    rows = [with_q[i] for i in _spread(rng, len(with_q), cfg.n_figure_queries)]
    figures["selection_view"] = sel[rows] if rows else np.zeros(0, int)
    # The figure shows the views as ``images`` holds them: a map (and query) of a view scored
    # at another size is scaled to that size.
    size = es.images.shape[1:3]
    figures["selection_query"] = np.asarray(
        [_scale_yx(queries[r][0], matids[r].shape, size) for r in rows], int
    ).reshape(-1, 2)
    figures["selection_sim"] = np.asarray(
        [
            _resize_map(
                M.similarity_map(patches[r], queries[r][0], matids[r].shape, cfg.upsample), size
            )
            for r in rows
        ],
        np.float32,
    ).reshape(len(rows), *size)
    figures["selection_threshold"] = np.float32(threshold)
    return res


def _scale_yx(
    yx: tuple[int, int], shape: tuple[int, ...], size: tuple[int, ...]
) -> tuple[int, int]:
    """Pixel ``yx`` of an image of ``shape`` in an image of ``size`` (the same view resized)."""
    if tuple(shape[:2]) == tuple(size[:2]):
        return yx
    return (yx[0] * size[0] // shape[0], yx[1] * size[1] // shape[1])


def _resize_map(sim: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A similarity map resized (bilinear, antialiased) to ``size``; as is when it fits."""
    if sim.shape == tuple(size[:2]):
        return sim
    grid = torch.from_numpy(np.ascontiguousarray(sim, np.float32))[None, None]
    return F.interpolate(grid, size=tuple(size[:2]), mode="bilinear", antialias=True)[0, 0].numpy()
