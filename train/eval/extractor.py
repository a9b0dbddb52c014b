"""What every model becomes for the evaluation: an extractor, and the ``Features`` it returns.

An *extractor* is any callable ``(images, masks) -> Features`` with

* ``images``: ``(B, H, W, 3)`` uint8 sRGB;
* ``masks``: ``(B, H, W)`` bool object masks, or ``None`` (extractors may ignore them);
* ``Features.cls``: ``(B, D)`` float32, ``Features.patches``: ``(B, h, w, Dp)`` float32.

This module sits below both kinds of extractor: ``baselines`` (hand-crafted pixel
statistics) and ``features`` (network backbones, ``load_model``) build ``Features`` from
here, and ``protocol`` consumes them, so none of those needs to import another for the type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Features:
    """``cls`` ``(B, D)`` and ``patches`` ``(B, h, w, Dp)``, both float32 numpy arrays."""

    cls: np.ndarray
    patches: np.ndarray


Extractor = Callable[[np.ndarray, "np.ndarray | None"], Features]
