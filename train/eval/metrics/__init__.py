"""Metrics for material features: pure functions over arrays with documented shapes.

One module per family, all re-exported here (``from train.eval import metrics as M``):

* ``retrieval``: cross-shape / cross-light retrieval, the object-mask readout, weighted
  k-NN category accuracy, the intra / inter-material invariance ratio;
* ``probes``: linear probes, group-wise and stratified folds, fold rotation;
* ``selection``: material selection from patch features (similarity maps, thresholds,
  scores and their floors, query pixels);
* ``common``: the helpers they share (unit-length rows, cosine matrix, label checks).

Notation used in every docstring:

* ``N`` views, ``D`` feature dimensions; ``feats`` is ``(N, D)`` float (any scale: cosine
  similarity is used, so each row is L2-normalised inside the function).
* ``material``, ``mesh``, ``light``, ``category``, ``group`` are ``(N,)`` arrays of labels
  (ints or strings); equal values mean the same thing.
* Images are ``(H, W)``; patch features ``(h, w, D)``; a material-index map ``(H, W)`` ints.

A query that cannot be scored (no valid gallery item, no neighbour, an empty region) is
left out of the mean and counted in ``n_excluded``: metrics are never NaN because of it.
Empty results are ``None`` so that they serialise to JSON ``null``.
"""

from train.eval.metrics.common import check_labels, cosine_matrix, l2_normalise
from train.eval.metrics.probes import (
    group_folds,
    linear_probe,
    linear_probe_by_groups,
    linear_probe_folds,
    stratified_group_folds,
)
from train.eval.metrics.retrieval import (
    RetrievalResult,
    average_precision,
    cross_retrieval,
    invariance,
    knn_accuracy,
    mask_pool,
)
from train.eval.metrics.selection import (
    DEFAULT_THRESHOLDS,
    UPSAMPLE_MODES,
    choose_threshold,
    material_selection,
    sample_queries,
    selection_floors,
    selection_maps,
    selection_scores,
    similarity_map,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "UPSAMPLE_MODES",
    "RetrievalResult",
    "average_precision",
    "check_labels",
    "choose_threshold",
    "cosine_matrix",
    "cross_retrieval",
    "group_folds",
    "invariance",
    "knn_accuracy",
    "l2_normalise",
    "linear_probe",
    "linear_probe_by_groups",
    "linear_probe_folds",
    "mask_pool",
    "material_selection",
    "sample_queries",
    "selection_floors",
    "selection_maps",
    "selection_scores",
    "similarity_map",
    "stratified_group_folds",
]
