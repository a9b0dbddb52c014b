"""The image metrics of bench/render_quality.py on hand-made arrays (no Blender)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rq():
    spec = importlib.util.spec_from_file_location(
        "render_quality", ROOT / "bench" / "render_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_identical_images_give_infinite_psnr_and_ssim_one(rq):
    img = np.random.default_rng(0).uniform(size=(24, 20, 3))
    mask = np.zeros((24, 20), bool)
    mask[4:18, 3:15] = True
    assert rq.psnr(img, img) == math.inf
    assert rq.psnr(img, img, mask) == math.inf
    assert rq.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert rq.ssim(img, img, mask) == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_gives_known_psnr_and_ssim(rq):
    ref = np.full((16, 16, 3), 0.5)
    img = ref + 0.1  # MSE 0.01 -> 20 dB
    assert rq.psnr(img, ref) == pytest.approx(20.0)
    # Flat images: the structure term is C2 / C2 = 1, only the luminance term is left.
    c1 = rq.SSIM_K1**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert rq.ssim(img, ref) == pytest.approx(expected, rel=1e-9)


def test_psnr_counts_only_the_masked_pixels(rq):
    ref = np.zeros((10, 10))
    img = ref.copy()
    img[:, 5:] = 1.0  # wrong everywhere outside the mask
    img[0:5, 0:5] = 0.01  # MSE 1e-4 inside -> 40 dB
    mask = np.zeros((10, 10), bool)
    mask[0:5, 0:5] = True
    assert rq.psnr(img, ref, mask) == pytest.approx(40.0)
    assert rq.psnr(img, ref) < 10.0


def test_ssim_of_noise_is_lower_than_of_a_small_offset(rq):
    rng = np.random.default_rng(1)
    ref = rng.uniform(0.2, 0.8, size=(32, 32))
    assert rq.ssim(ref + rng.normal(0, 0.1, ref.shape), ref) < rq.ssim(ref + 0.01, ref) < 1.0


def test_object_mask_from_float_and_uint8_alpha(rq):
    alpha = np.array([[0.0, 0.49], [0.5, 1.0]])
    expected = np.array([[False, False], [True, True]])
    np.testing.assert_array_equal(rq.object_mask(alpha), expected)
    np.testing.assert_array_equal(rq.object_mask(np.round(alpha * 255).astype(np.uint8)), expected)
    with pytest.raises(ValueError, match="empty"):
        rq.object_mask(np.zeros((4, 4)))


def test_corrected_psnr_takes_out_the_reference_noise(rq):
    # Measured MSE 2e-4 of which 1e-4 is the reference's own noise: 1e-4 left -> 40 dB.
    measured = -10 * math.log10(2e-4)
    assert rq.corrected_psnr(measured, 1e-4) == pytest.approx(40.0)
    # Nothing left above the reference's noise: at most 10 dB better than it resolves.
    assert rq.corrected_psnr(40.0, 1e-4) == pytest.approx(50.0)


def test_parse_grid(rq):
    assert rq.parse_grid("64:4,16;256:8") == {64: [4, 16], 256: [8]}
