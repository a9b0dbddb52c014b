"""Array helpers every metric shares: unit-length rows, cosine matrices, label checks.

Part of ``train.eval.metrics``; the retrieval, probe and selection modules build on it and
it imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (``(..., D)``) scaled to unit length, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``(Na, Nb)`` cosine similarities between rows of ``a`` and ``b`` (``b = a`` if None)."""
    a = l2_normalise(a)
    b = a if b is None else l2_normalise(b)
    return a @ b.T


def check_labels(x: Sequence | np.ndarray, n: int, name: str) -> np.ndarray:
    """``x`` as an array, checked to be ``(n,)`` labels (one per feature row)."""
    arr = np.asarray(x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match feats, got {arr.shape}")
    return arr
