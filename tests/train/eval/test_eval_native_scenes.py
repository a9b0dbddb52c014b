"""Selection scenes rendered larger than the object views ([scenes].resolution) are scored
at their rendered size; object views, and sets without larger scenes, are read as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.eval.baselines import PixelStats
from train.eval.cli import main
from train.eval.data import read_eval_set
from train.eval.features import extract_native, random_backbone
from train.eval.protocol import EvalConfig, evaluate

MESHES = ["m-a", "m-b", "m-c", "m-d"]
LIGHTS = ["l-a", "l-b", "l-c"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """16 materials at 32 px; the samples of 6 of them are selection scenes at 64 px, one of
    them the very first sample (so the first view read is a larger scene)."""
    from conftest import make_material, write_dataset

    root = tmp_path_factory.mktemp("native")
    ev = [make_material(i, "ev") for i in range(16)]
    scenes = {m["id"] for m in [ev[0], *ev[11:]]}
    write_dataset(
        root / "mixed", ev, MESHES, LIGHTS, views=3, size=32, selection=scenes, scene_size=64
    )
    write_dataset(root / "same", ev, MESHES, LIGHTS, views=3, size=32, selection=scenes)
    return root


def test_scene_views_keep_their_rendered_size(mixed):
    es = read_eval_set(str(mixed / "mixed"))
    # Object views set the common size, though the first sample is a 64 px scene.
    assert es.images.shape[1:3] == (32, 32) and es.matids.shape[1:] == (32, 32)
    assert es.scene is not None and es.scene.sum() == 6 * 3
    assert len(es.native) == len(es)
    for i in range(len(es)):
        view = es.native[i]
        if not es.scene[i]:
            assert view is None
            assert es.view_arrays(i).image.shape == (32, 32, 3)
            continue
        assert view.image.shape == (64, 64, 3)
        assert view.mask.shape == (64, 64) and view.matid.shape == (64, 64)
        assert set(np.unique(view.matid)) == {0, 1, 2}
        assert es.view_arrays(i) is view
    sub = es.subset(np.flatnonzero(es.scene))
    assert len(sub.native) == len(sub) == 18 and all(v is not None for v in sub.native)
    assert es.subset(np.flatnonzero(~es.scene)).native == []


def test_same_size_scenes_are_read_as_before(mixed):
    es = read_eval_set(str(mixed / "same"))
    assert es.native == [] and es.images.shape[1:3] == (32, 32)
    # --image-size: object views resized; scenes rendered larger than that keep their size.
    big = read_eval_set(str(mixed / "mixed"), image_size=48)
    assert big.images.shape[1:3] == (48, 48)
    assert {v.image.shape for v in big.native if v is not None} == {(64, 64, 3)}
    assert read_eval_set(str(mixed / "mixed"), image_size=64).native == []


class ShapeSpy:
    """PixelStats that records the size of every batch it is given."""

    def __init__(self, patch: int) -> None:
        self.inner = PixelStats(patch)
        self.patch_size = patch
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, images, masks=None):
        self.shapes.append(tuple(images.shape[1:3]))
        return self.inner(images, masks)


def test_selection_is_scored_at_the_scene_size(mixed):
    es = read_eval_set(str(mixed / "mixed"))
    backbone = random_backbone(image_size=32, patch_size=8, seed=0)
    result = evaluate(backbone, es, None, EvalConfig())
    m = result.metrics
    assert m["counts"]["object_views"] == 30 and m["counts"]["selection_views"] == 18
    # Object views: 32 px at patch 8 is a 4 x 4 grid; the 64 px scenes give 8 x 8.
    assert result.figures["pca_patches"].shape[1:3] == (4, 4)
    assert m["selection"]["native_size"] == {"image_size": [[64, 64]], "patch_grid": [[8, 8]]}
    assert m["selection"]["iou"] is not None and m["selection"]["n_queries"] > 0
    # The report's maps are at the size the figure's images are.
    assert result.figures["selection_sim"].shape[1:] == (32, 32)
    assert (result.figures["selection_query"] < 32).all()

    spy = ShapeSpy(4)
    pixels = evaluate(spy, es, None, EvalConfig()).metrics
    assert (64, 64) in spy.shapes and (32, 32) in spy.shapes
    assert pixels["selection"]["native_size"]["patch_grid"] == [[16, 16]]

    same = evaluate(backbone, read_eval_set(str(mixed / "same")), None, EvalConfig()).metrics
    assert "native_size" not in same["selection"]
    # Retrieval sees the same object views either way.
    assert same["retrieval"] == m["retrieval"]


def test_native_extraction_rounds_down_to_the_patch():
    images = np.random.default_rng(0).integers(0, 256, (2, 70, 70, 3), dtype=np.uint8)
    masks = np.ones((2, 70, 70), bool)
    backbone = random_backbone(image_size=32, patch_size=8, seed=0)
    assert extract_native(backbone, images, masks).patches.shape[:3] == (2, 8, 8)
    assert backbone(images).patches.shape[1:3] == (4, 4)  # itself still resizes to 32
    assert extract_native(PixelStats(8), images, masks).patches.shape[:3] == (2, 8, 8)
    assert extract_native(PixelStats(7), images, masks).patches.shape[:3] == (2, 10, 10)


def test_cli_scores_mixed_sizes_and_writes_the_report(mixed, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--model",
            "pixels=pixel-stats",
            "--eval-data",
            str(mixed / "mixed"),
            "--train-index",
            "none",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "pixels" / "metrics.json").read_text())
    assert metrics["data"]["image_size"] == 32
    # pixel-stats patches are image size / 8 = 4 px: 16 x 16 on the 64 px scenes.
    assert metrics["selection"]["native_size"] == {
        "image_size": [[64, 64]],
        "patch_grid": [[16, 16]],
    }
    assert (out / "report.md").exists()


def test_tiled_extraction_stitches_each_tiles_own_grid():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    backbone = random_backbone(image_size=32, patch_size=8, seed=0)
    tiled = extract_native(backbone, images, None, tile=32)
    assert tiled.patches.shape[:3] == (2, 8, 12)
    # Tile (row 1, column 2) of image 1 on its own gives the grid's rows 4-7, columns 8-11.
    alone = backbone(images[1:2, 32:64, 64:96])
    np.testing.assert_allclose(tiled.patches[1, 4:8, 8:12], alone.patches[0], atol=1e-5)
    # One pass over the whole scene sees every tile at once: other features.
    whole = extract_native(backbone, images, None)
    assert not np.allclose(whole.patches[1, 4:8, 8:12], alone.patches[0], atol=1e-3)
    assert tiled.cls.shape == (2, backbone.backbone.embed_dim)
    with pytest.raises(ValueError, match="tile 24"):
        extract_native(backbone, images, None, tile=24)
    # A tile changes nothing for pixel statistics (their patches see only their own pixels).
    np.testing.assert_array_equal(
        extract_native(PixelStats(8), images, None, tile=32).patches,
        extract_native(PixelStats(8), images, None).patches,
    )
