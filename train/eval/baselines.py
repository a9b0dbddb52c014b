"""Baselines that every learned feature must beat, run by the same evaluation code.

* ``PixelStats``: a hand-crafted pixel-statistics feature, per patch and per image: a joint
  RGB colour histogram, a magnitude-weighted gradient-orientation histogram with the mean
  gradient magnitude, and a histogram of uniform local binary patterns (LBP). It shows the
  "colour association" failure mode: two materials of one colour look alike to it.
* A random-init ViT (``train.eval.features.random_backbone``): the untrained floor.
* Any backbone checkpoint (``train.eval.features.load_checkpoint``), zero-shot.

Example::

    from train.eval.baselines import PixelStats
    feats = PixelStats(patch_size=8)(images, masks)   # images (B, 64, 64, 3) uint8
    feats.cls.shape, feats.patches.shape               # (B, 83), (B, 8, 8, 83)
"""

from __future__ import annotations

import numpy as np

from train.eval.extractor import Features

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Uniform LBP codes (at most two 0/1 transitions around the circle) keep their count of ones
# (0..8); every other code goes to bin 9.
_N_LBP = 10


def _uniform_lbp_table() -> np.ndarray:
    table = np.empty(256, dtype=np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        table[code] = sum(bits) if transitions <= 2 else _N_LBP - 1
    return table


_LBP_TABLE = _uniform_lbp_table()


class PixelStats:
    """Colour histogram + gradient-orientation histogram + LBP histogram.

    ``colour_bins`` levels per channel (joint histogram of ``colour_bins**3`` bins),
    ``orientation_bins`` unsigned gradient orientations. Each block is normalised to sum 1
    and square-rooted (so cosine similarity is the Bhattacharyya coefficient), then the
    blocks are concatenated with equal weight. Patch features use every pixel of the patch;
    the image feature (CLS) uses object pixels only when a mask is given.
    """

    def __init__(self, patch_size: int = 8, colour_bins: int = 4, orientation_bins: int = 8):
        self.patch_size = patch_size
        self.colour_bins = colour_bins
        self.orientation_bins = orientation_bins

    @property
    def dim(self) -> int:
        return self.colour_bins**3 + self.orientation_bins + 1 + _N_LBP

    def pixel_codes(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-pixel ``(colour_bin, orientation_bin, gradient_magnitude, lbp_bin)``, each
        ``(B, H, W)``."""
        img = images.astype(np.float32) / 255.0
        q = np.minimum((img * self.colour_bins).astype(np.int64), self.colour_bins - 1)
        colour = (q[..., 0] * self.colour_bins + q[..., 1]) * self.colour_bins + q[..., 2]
        gray = img @ LUMA
        gy, gx = np.gradient(gray, axis=(1, 2))
        magnitude = np.hypot(gx, gy)
        angle = np.mod(np.arctan2(gy, gx), np.pi)
        orient = np.minimum(
            (angle / np.pi * self.orientation_bins).astype(np.int64), self.orientation_bins - 1
        )
        pad = np.pad(gray, ((0, 0), (1, 1), (1, 1)), mode="edge")
        h, w = gray.shape[1:]
        code = np.zeros(gray.shape, dtype=np.int64)
        ring = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
        for bit, (dy, dx) in enumerate(ring):
            code |= (pad[:, dy : dy + h, dx : dx + w] >= gray).astype(np.int64) << bit
        return colour, orient, magnitude, _LBP_TABLE[code]

    def _histograms(self, images: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``(B, h, w, dim)`` un-normalised block histograms summed per patch."""
        b, height, width = images.shape[:3]
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch {p}")
        colour, orient, magnitude, lbp = self.pixel_codes(images)
        gh, gw = height // p, width // p
        # Patch index of each pixel, so one bincount fills every patch's histogram at once.
        rows = np.arange(height) // p
        cols = np.arange(width) // p
        patch = (np.arange(b)[:, None, None] * gh + rows[None, :, None]) * gw + cols[None, None, :]
        n_patch = b * gh * gw

        def hist(values: np.ndarray, n_bins: int, w: np.ndarray) -> np.ndarray:
            idx = (patch * n_bins + values).ravel()
            return np.bincount(idx, weights=w.ravel(), minlength=n_patch * n_bins).reshape(
                n_patch, n_bins
            )

        blocks = [
            hist(colour, self.colour_bins**3, weights),
            hist(orient, self.orientation_bins, weights * magnitude),
            np.bincount(patch.ravel(), weights=(weights * magnitude).ravel(), minlength=n_patch)[
                :, None
            ],
            hist(lbp, _N_LBP, weights),
            np.bincount(patch.ravel(), weights=weights.ravel(), minlength=n_patch)[:, None],
        ]
        return np.concatenate(blocks, axis=1).reshape(b, gh, gw, -1)

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        """Raw block sums ``(..., dim + 1)`` (last = pixel weight) -> feature ``(..., dim)``."""
        nc, no = self.colour_bins**3, self.orientation_bins
        count = np.maximum(raw[..., -1:], 1e-6)
        colour = raw[..., :nc]
        orient = raw[..., nc : nc + no]
        mag = raw[..., nc + no : nc + no + 1] / count
        lbp = raw[..., nc + no + 1 : -1]
        parts = []
        for block in (colour, orient, lbp):
            total = np.maximum(block.sum(-1, keepdims=True), 1e-6)
            parts.append(np.sqrt(block / total))
        # Mean gradient magnitude squashed to [0, 1) so it can't dominate the histograms.
        parts.insert(2, np.tanh(4 * mag))
        return np.concatenate(parts, axis=-1).astype(np.float32)

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> Features:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got {images.shape}")
        ones = np.ones(images.shape[:3], dtype=np.float64)
        raw_patch = self._histograms(images, ones)
        if masks is None:
            raw_cls = raw_patch.sum((1, 2))
        else:
            m = np.asarray(masks, dtype=np.float64)
            # An empty mask (object outside the frame) falls back to the whole image.
            m = np.where(m.sum((1, 2), keepdims=True) > 0, m, 1.0)
            raw_cls = self._histograms(images, m).sum((1, 2))
        return Features(cls=self._normalise(raw_cls), patches=self._normalise(raw_patch))
