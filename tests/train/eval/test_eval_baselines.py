"""Hand-crafted and random-init baselines: shapes, determinism and what they can tell apart."""

from __future__ import annotations

import numpy as np
import pytest

from train.eval import metrics as M
from train.eval.baselines import PixelStats
from train.eval.features import extract_all, load_model, random_backbone


def _flat(colour, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (size, size, 3)).copy()


def _checker(a, b, size: int = 32, cell: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    on = ((yy // cell + xx // cell) % 2 == 0)[..., None]
    return np.where(on, np.asarray(a, np.uint8), np.asarray(b, np.uint8))


def test_pixel_stats_shapes_and_determinism():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    ps = PixelStats(patch_size=8)
    a, b = ps(images), ps(images)
    assert a.cls.shape == (3, ps.dim) and a.patches.shape == (3, 4, 6, ps.dim) and ps.dim == 83
    assert np.array_equal(a.cls, b.cls) and a.cls.dtype == np.float32
    with pytest.raises(ValueError, match="multiple of patch"):
        ps(images[:, :30])


def test_pixel_stats_tells_colour_and_texture_apart():
    ps = PixelStats(patch_size=8)
    red, red2, blue = _flat((200, 30, 30)), _flat((205, 32, 28)), _flat((30, 30, 200))
    grey_flat = _flat((128, 128, 128))
    grey_check = _checker((100, 100, 100), (156, 156, 156))  # same mean, different texture
    f = ps(np.stack([red, red2, blue, grey_flat, grey_check])).cls
    sim = M.cosine_matrix(f)
    assert sim[0, 1] > 0.99 and sim[0, 2] < 0.8
    assert sim[3, 4] < 0.8


def test_pixel_stats_mask_restricts_the_image_feature():
    ps = PixelStats(patch_size=8)
    img = _flat((200, 30, 30))
    img[:, 16:] = (30, 30, 200)
    mask = np.zeros((1, 32, 32), bool)
    mask[0, :, :16] = True
    nc = ps.colour_bins**3  # texture at the mask's edge sees the neighbour: compare colour
    masked = ps(img[None], mask).cls[:, :nc]
    left = ps(np.ascontiguousarray(img[None, :, :16])).cls[:, :nc]
    assert np.allclose(masked, left, atol=1e-5)
    assert not np.allclose(ps(img[None]).cls[:, :nc], left, atol=1e-2)


def test_pixel_stats_patches_select_a_region():
    rng = np.random.default_rng(1)
    img = _flat((180, 150, 60), size=32)
    noisy = rng.integers(40, 90, (32, 32, 3), dtype=np.uint8)
    img[8:24, 8:24] = noisy[8:24, 8:24]
    matid = np.zeros((32, 32), int)
    matid[8:24, 8:24] = 1
    feats = PixelStats(patch_size=8)(img[None]).patches[0]
    res = M.material_selection([feats], [matid], [[(12, 12), (2, 30)]], 0.5, upsample="nearest")
    assert res["iou"] == pytest.approx(1.0)


def test_random_backbone_is_seeded_and_shaped():
    images = np.random.default_rng(2).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    a = extract_all(random_backbone(image_size=32, patch_size=8, seed=3), images, batch_size=2)
    b = random_backbone(image_size=32, patch_size=8, seed=3)(images)
    c = random_backbone(image_size=32, patch_size=8, seed=4)(images)
    assert a.cls.shape == (3, 192) and a.patches.shape == (3, 4, 4, 192)
    assert np.allclose(a.cls, b.cls, atol=1e-5) and not np.allclose(a.cls, c.cls, atol=1e-3)


def test_load_model_specs():
    assert isinstance(load_model("pixel-stats:4", image_size=32), PixelStats)
    assert load_model("pixel-stats:4", image_size=32).patch_size == 4
    rnd = load_model("random", image_size=32)
    assert rnd(np.zeros((1, 32, 32, 3), np.uint8)).patches.shape[1:3] == (4, 4)
    with pytest.raises(FileNotFoundError, match="no-such.pt"):
        load_model("/nonexistent/no-such.pt", image_size=32)
    with pytest.raises(ValueError, match="random-like:CKPT"):
        load_model("random-like:", image_size=32)
    with pytest.raises(ValueError, match="pretrained:ARCH:FILE"):
        load_model("pretrained:vit_tiny_patch16_224", image_size=32)
