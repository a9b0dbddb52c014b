"""The protocol on a tiny synthetic eval set: which views feed which metric, and options."""

from __future__ import annotations

from train.eval.baselines import PixelStats
from train.eval.data import read_eval_set
from train.eval.protocol import EvalConfig, evaluate


def test_protocol_splits_views_and_ignores_matid(tmp_path, dataset_writer, material_factory):
    mats = [material_factory(i) for i in range(8)]
    sel = {m["id"] for m in mats[6:]}
    d = dataset_writer(
        tmp_path / "ev", mats, ["a", "b", "c"], ["x", "y"], views=3, size=32, selection=sel
    )
    es = read_eval_set(str(d))
    full = evaluate(PixelStats(4), es, None, EvalConfig(probe_group="material"))
    m = full.metrics
    assert m["counts"] == {"views": 24, "object_views": 18, "selection_views": 6, "materials": 6}
    assert m["retrieval"]["n_queries"] + m["retrieval"]["n_excluded"] == 18
    # The object-mask readout is scored on the same queries as the CLS feature.
    assert m["retrieval_masked"]["n_queries"] == m["retrieval"]["n_queries"]
    assert m["selection"]["threshold_from"].startswith("eval set")
    assert full.figures["pca_patches"].shape[1:3] == (8, 8)
    assert list(es.material_regions()) == [0] * 18 + [2] * 6
    # Ignoring index 2 leaves one material on the scenes: they become object views.
    ignored = evaluate(PixelStats(4), es, None, EvalConfig(matid_ignore=(2,))).metrics
    assert ignored["counts"]["object_views"] == 24 and "selection" not in ignored

    only_sel = evaluate(PixelStats(4), es.subset(es.has_matid()), None, EvalConfig()).metrics
    assert "retrieval" not in only_sel and only_sel["counts"]["object_views"] == 0
