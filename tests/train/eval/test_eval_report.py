"""Report and figure pieces: tolerant log reading, PCA colours, tables, comparisons."""

from __future__ import annotations

import json

import numpy as np

from train.eval import figures as F
from train.eval import report as R


def test_loss_series_reads_tolerantly(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 0, "loss/total": 3.0, "lr": 0.1}\n'
        "not json\n"
        "[1, 2]\n"
        '{"step": 1, "loss": {"total": 2.0, "ibot": NaN}, "note": "x"}\n'
        '{"loss/total": 1.0}\n'
        "\n"
        '{"step": 1, "loss/total": 2.5}\n'
    )
    recs = R.read_metrics_jsonl(path)
    assert len(recs) == 4
    series = R.loss_series(recs)
    assert set(series) == {"loss/total"}  # nested "loss"/"total" flattens to the same name
    steps, vals = series["loss/total"]
    # the record without a step sits at its line number (2); step 1 logged again after a
    # resume keeps the later value
    assert list(steps) == [0.0, 1.0, 2.0] and list(vals) == [3.0, 2.5, 1.0]


def test_pca_rgb_separates_two_feature_clusters():
    rng = np.random.default_rng(0)
    patches = np.zeros((2, 4, 4, 8))
    patches[:, :, :2] = [1, 0, 0, 0, 0, 0, 0, 0]
    patches[:, :, 2:] = [0, 1, 0, 0, 0, 0, 0, 0]
    patches += 0.01 * rng.standard_normal(patches.shape)
    rgb = F.pca_rgb(patches)
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :, :2, 0].astype(int), rgb[:, :, 2:, 0].astype(int)
    assert abs(left.mean() - right.mean()) > 150


def test_heat_colours_and_ticks():
    c = F.heat_colours(np.array([0.0, 0.5, 1.0, 2.0]))
    assert c.shape == (4, 3) and c.dtype == np.uint8 and (c[2] == c[3]).all()
    assert c[0, 2] > c[0, 0] and c[2, 0] > c[2, 2]  # blue at 0, red at 1
    assert F._nice_ticks(1.0, 9.4) == [2, 4, 6, 8]


def _m(r1, phys, contrast=None):
    config = None if contrast is None else {"loss": {"contrast_weight": contrast}}
    return {
        "model": {"physical_augmentation": phys, "config": config},
        "retrieval": {"recall@1": r1, "chance_recall@1": 0.05},
        "knn": {"knn@10": 0.5, "chance": 0.25},
    }


def test_headline_table():
    p0 = _m(0.6, True)
    p0["selection"] = {"iou": 0.7, "iou_select_all": 0.25, "iou_oracle": 0.9}
    table = R.headline_table({"p0": p0, "b": _m(0.4, False)})
    assert "| p0 | 0.600 |" in table and "| - |" in table
    head, _, p0_row, _, floor = table.splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    row = dict(zip(cols, (c.strip() for c in p0_row.strip("|").split("|")), strict=True))
    assert row["sel. IoU"] == "0.700" and row["sel. oracle"] == "0.900"
    floors = dict(zip(cols, (c.strip() for c in floor.strip("|").split("|")), strict=True))
    assert floors["model"] == "*chance / select all*"
    assert floors["R@1"] == "0.050" and floors["k-NN@10"] == "0.250"
    assert floors["sel. IoU"] == "0.250" and floors["R@5"] == "-"


def test_seed_groups_and_comparison():
    models = {
        "physical-s0": _m(0.60, True),
        "physical-s1": _m(0.64, True),
        "phys-nocontrast_seed0": _m(0.50, True),
        "photometric-s0": _m(0.40, False),
        "photometric-s1": _m(0.43, False),
        "pixels": _m(0.2, None),
    }
    groups = R.seed_groups(models)
    assert groups["physical"] == ["physical-s0", "physical-s1"]
    assert groups["phys-nocontrast"] == ["phys-nocontrast_seed0"] and groups["pixels"] == ["pixels"]
    lines = R.comparison_lines(models)
    assert len(lines) == 2  # two physical groups x one photometric group
    assert "**physical**" in lines[0] and "+0.205" in lines[0]
    assert "is larger: **physical** is ahead" in lines[0]
    assert "one seed on a side" in lines[1]
    table = R.seed_table(models)
    assert "| physical | 2 | 0.620 ± 0.020 |" in table and "| pixels | 1 | 0.200 |" in table
    assert table.splitlines()[-1].startswith("| *chance / select all* |")
    assert R.seed_table({"a": models["pixels"], "b": models["physical-s0"]}) == ""

    def pair(a0: float, a1: float, b0: float, b1: float) -> str:
        """The physical-vs-photometric line of groups a (physical) and b (photometric)."""
        ab = {
            "a-s0": _m(a0, True),
            "a-s1": _m(a1, True),
            "b-s0": _m(b0, False),
            "b-s1": _m(b1, False),
        }
        return R.comparison_lines(ab)[0]

    assert "not larger: neither is shown ahead" in pair(0.60, 0.70, 0.58, 0.62)
    behind = pair(0.40, 0.42, 0.58, 0.62)
    assert "-0.190" in behind and "is larger: **b** is ahead" in behind
    assert R.comparison_lines({"p0": _m(0.6, True)}) == []


def test_contrast_ablation_lines():
    models = {
        "physical-s0": _m(0.60, True, 1.0),
        "physical-s1": _m(0.62, True, 1.0),
        "physical-nocontrast-s0": _m(0.40, True, 0.0),
        "physical-nocontrast-s1": _m(0.45, True, 0.0),
        "photometric-s0": _m(0.30, False, 1.0),
        "photometric-s1": _m(0.31, False, 1.0),
    }
    lines = R.comparison_lines(models)
    # physical vs photometric with the same losses (both with L_contrast), then with vs
    # without L_contrast
    assert len(lines) == 2
    ablation = lines[1]
    assert "**physical** (physical + L_contrast" in ablation
    assert "**physical-nocontrast** (physical, no L_contrast" in ablation
    assert "+0.185" in ablation and "is larger" in ablation
    # Without L_contrast on both sides: the views alone.
    models["photometric-nocontrast-s0"] = _m(0.35, False, 0.0)
    models["photometric-nocontrast-s1"] = _m(0.36, False, 0.0)
    lines = R.comparison_lines(models)
    assert len(lines) == 3
    assert "**physical-nocontrast** (physical" in lines[1]
    assert "**photometric-nocontrast** (photometric" in lines[1]
    # An unrecorded contrast weight is never guessed: a group that mixes recorded and
    # unrecorded runs is compared with nothing.
    del models["photometric-nocontrast-s0"], models["photometric-nocontrast-s1"]
    models["physical-s1"] = _m(0.62, True)
    assert R.comparison_lines(models) == []


def test_material_labels_ablation_and_baseline_lines():
    def m(r1, phys, labels, contrast=1.0):
        out = _m(r1, phys, contrast)
        if labels is not None:
            out["model"]["config"]["data"] = {"labels": labels}
        return out

    models = {
        "physical-s0": m(0.60, True, "material"),
        "physical-s1": m(0.62, True, "material"),
        "physical-nolabels-s0": m(0.50, True, "sample"),
        "physical-nolabels-s1": m(0.54, True, "sample"),
        "photometric-s0": m(0.30, False, "material"),
        "photometric-s1": m(0.31, False, "material"),
        "pixel-stats": _m(0.20, None),
    }
    lines = R.comparison_lines(models)
    assert len(lines) == 3  # two physical groups x photometric, then material vs sample labels
    assert "**physical** (physical, material labels" in lines[2]
    assert "**physical-nolabels** (physical, no labels" in lines[2] and "+0.090" in lines[2]
    base = R.baseline_lines(models)
    assert base[0] == "- **physical** mean R@1 0.610 = 3.05x **pixel-stats** (0.200)"
    assert len(base) == 3  # every trained group against the one baseline
    # Without a recorded data.labels the labels comparison is never guessed.
    models["physical-nolabels-s1"] = m(0.54, True, None)
    assert len(R.comparison_lines(models)) == 2
    # A photometric group with another L_contrast setting is not compared with them.
    models["photometric-s0"] = m(0.30, False, "material", contrast=0.0)
    models["photometric-s1"] = m(0.31, False, "material", contrast=0.0)
    assert R.comparison_lines(models) == []


def test_comparison_lines_report_secondary_metrics():
    def m(r1, r5, ratio, phys):
        out = _m(r1, phys)
        out["retrieval"]["recall@5"] = r5
        out["invariance"] = {"ratio": ratio}
        return out

    models = {
        "physical-s0": m(0.080, 0.24, 0.94, True),
        "physical-s1": m(0.080, 0.25, 0.98, True),
        "photometric-s0": m(0.083, 0.21, 1.03, False),
        "photometric-s1": m(0.075, 0.22, 1.04, False),
    }
    (line,) = R.comparison_lines(models)
    assert (
        "difference +0.001; seed-to-seed spread 0.008: the difference is not larger: neither is shown ahead."
        in line
    )
    assert "R@5 +0.030 (spread 0.010: larger)" in line
    # lower is better for the invariance ratio; its gap is negative and still beyond spread
    assert "intra/inter -0.075 (spread 0.040: larger), lower is better" in line
    assert "mAP" not in line  # not recorded on either side: never invented
    one_each = {"physical-s0": models["physical-s0"], "p": models["photometric-s0"]}
    (single,) = R.comparison_lines(one_each)
    assert "one seed on a side" in single and "R@5 +0.030; intra/inter -0.090, lower" in single


def test_figures_draw(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (2, 6, 16, 16, 3), dtype=np.uint8)
    labels = np.array([["a"] * 6, ["b", "b", "", "", "", ""]])
    grid = F.retrieval_grid(imgs, labels, np.zeros((2, 5), bool), "t")
    assert grid.width > 6 * F.THUMB and grid.height > 2 * F.THUMB
    sel = F.selection_figure(
        imgs[0, :2], np.array([[3, 4], [8, 8]]), rng.uniform(-1, 1, (2, 16, 16)), 0.2, "t"
    )
    assert sel.height > 2 * 160
    runs = {
        "a": {"loss/total": (np.arange(5.0), np.arange(5.0)[::-1])},
        "b": {"loss/total": (np.arange(3.0), np.ones(3)), "loss/x": (np.zeros(1), np.ones(1))},
    }
    two = F.loss_curves(runs)
    assert two.width > 600
    # six long model names do not fit beside the title: the legend wraps (taller), and the
    # last entry's colour swatch is drawn inside the image, below the first line
    many = {f"physical-nocontrast-s{i}": runs["b"] for i in range(6)}
    six = np.asarray(F.loss_curves(many))
    assert six.shape[1] == two.width and six.shape[0] > two.height
    last = F.PALETTE[5 % len(F.PALETTE)]
    assert (six[20:60] == np.array(last, np.uint8)).all(axis=-1).any()


def test_retrieval_labels_are_wrapped_never_cut():
    for name in ("painted-metal-0012-3fa9c1", "metal-polished-0280-763bb3", "x" * 40, "a"):
        lines = F.wrap_label(name)
        assert "".join(lines) == name and all(len(line) <= 17 for line in lines)
    assert F.wrap_label("painted-metal-0012-3fa9c1") == ["painted-metal-", "0012-3fa9c1"]
    # Two-line names make the cells taller than one-line names.
    imgs = np.zeros((1, 3, 16, 16, 3), np.uint8)
    short = F.retrieval_grid(imgs, np.array([["a", "b", "c"]]), np.zeros((1, 2), bool), "t")
    long_names = np.array([["painted-metal-0012-3fa9c1"] * 3])
    tall = F.retrieval_grid(imgs, long_names, np.zeros((1, 2), bool), "t")
    assert tall.height == short.height + 14


def test_headline_states_chance_and_where_settings_came_from():
    m = {
        "retrieval": {"recall@1": 0.2, "chance_recall@1": 0.01, "n_queries": 400},
        "linear_probe": {"accuracy": 0.5, "chance": 0.12, "hyperparameters_from": "val set"},
        "probe_metal": {"accuracy": 0.7, "chance": 0.5, "hyperparameters_from": "val set"},
        "selection": {
            "iou": 0.3,
            "iou_select_all": 0.04,
            "threshold_from": "eval set (a group-disjoint half, not scored)",
            "n_queries": 12,
        },
    }
    table = R.headline_table({"model-a": m}).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    row = [c.strip() for c in table[2].strip("|").split("|")]
    chance = [c.strip() for c in table[3].strip("|").split("|")]
    col = {h: i for i, h in enumerate(head)}
    assert row[col["probe cat."]] == "0.500" and chance[col["probe cat."]] == "0.120"
    assert chance[col["probe metal"]] == "0.500" and chance[col["sel. IoU"]] == "0.040"
    assert row[col["tuned on"]] == "eval part / val"
    (warning,) = R.few_query_lines({"model-a": m})
    assert "selection was scored on only 12 queries" in warning
    # A probe at its chance level is said to be one; one above it is not.
    assert R.below_chance_lines({"model-a": m}) == []
    m["probe_metal"]["accuracy"] = 0.5
    lines = R.below_chance_lines({"model-a": m})
    assert len(lines) == 1 and "metal vs dielectric probe does not beat" in lines[0]
    assert "model-a (0.500)" in lines[0] and "families never seen" in lines[0]


def test_a_report_never_mixes_two_protocol_versions(tmp_path, caplog):
    from train.eval.protocol import PROTOCOL_VERSION

    for name, version in (("new", PROTOCOL_VERSION), ("old", None)):
        (tmp_path / name).mkdir()
        metrics = {"retrieval": {"recall@1": 0.5, "chance_recall@1": 0.1, "n_queries": 100}}
        if version is not None:
            metrics["protocol_version"] = version
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    caplog.set_level("WARNING", logger="phieat.train")
    assert list(R.current_models(tmp_path, ["new", "old"])) == ["new"]
    assert "old: left out of the report: scored by an older evaluation protocol" in caplog.text
    report = R.write_report(tmp_path).read_text()
    assert "| new |" in report and "| old |" not in report
