"""Augmentations: mask-aware multi-crop, mild photometric jitter, blur, solarize, iBOT block masks.

Every random choice is drawn in the data worker from the sample's own
``numpy.random.Generator`` (seeded from seed, epoch, stream and sample index), so a batch
is the same whichever device applies it. The work is split in two:

* geometry (``crop_box`` + ``render_crop``): on the CPU with PIL, one ``resize(box=...)``
  per crop; the crop box keeps at least ``min_object_fraction`` object pixels when the
  view has an object mask;
* photometric (``photometric``): batched tensor ops taking a per-crop parameter table
  (``PARAMS``); run in the worker (default) or on the training device
  (``crops.on_device = true``), where it costs almost nothing.

Colour is part of a material (gold vs copper), so jitter defaults are milder than DINOv2's:
no hue shift and no grayscale.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from train.models.backbone import IMAGENET_MEAN, IMAGENET_STD

# Columns of the per-crop photometric parameter table.
PARAMS = ("brightness", "contrast", "saturation", "grayscale", "blur_sigma", "solarize")
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def mask_integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a boolean mask ``[H, W]`` -> ``[H+1, W+1]`` int64."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return table


def box_fraction(table: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return float(inside) / max(1, (x1 - x0) * (y1 - y0))


def crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float],
    table: np.ndarray | None = None,
    min_fraction: float = 0.5,
    tries: int = 10,
    points: np.ndarray | None = None,
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(x0, y0, x1, y1)``, kept on the object when ``table`` is given.

    Draws up to ``tries`` boxes (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) and
    returns the first with at least ``min_fraction`` object pixels, else the one with the
    most object pixels; the whole image if no draw fits. With ``points`` (``[N, 2]`` object
    pixel (y, x) coordinates) boxes are centred on a random object pixel, so small objects
    are found in a few draws.
    """
    area = width * height
    best, best_fraction = (0, 0, width, height), -1.0
    for _ in range(max(1, tries)):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(*LOG_RATIO))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if not (0 < w <= width and 0 < h <= height):
            continue
        if points is not None and len(points):
            cy, cx = points[int(rng.integers(len(points)))]
            x0 = int(min(max(cx - w // 2, 0), width - w))
            y0 = int(min(max(cy - h // 2, 0), height - h))
        else:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if table is None:
            return box
        fraction = box_fraction(table, box)
        if fraction >= min_fraction:
            return box
        if fraction > best_fraction:
            best, best_fraction = box, fraction
    return best


def render_crop(
    image: Image.Image, box: tuple[int, int, int, int], size: int, flip: bool
) -> torch.Tensor:
    """Crop ``box`` of ``image`` resized to ``size`` x ``size`` -> uint8 ``[3, size, size]``."""
    out = image.resize((size, size), Image.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(out, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def photometric_params(
    rng: np.random.Generator,
    size: int,
    jitter_prob: float,
    brightness: float,
    contrast: float,
    saturation: float,
    grayscale_prob: float,
    blur_prob: float,
    blur_sigma: tuple[float, float],
    solarize_prob: float,
) -> list[float]:
    """One row of the ``PARAMS`` table; blur sigma is given at 224 px and scaled to ``size``."""
    b = c = s = 1.0
    if rng.random() < jitter_prob:
        b = rng.uniform(1 - brightness, 1 + brightness)
        c = rng.uniform(1 - contrast, 1 + contrast)
        s = rng.uniform(1 - saturation, 1 + saturation)
    gray = float(rng.random() < grayscale_prob)
    sigma = rng.uniform(*blur_sigma) * size / 224.0 if rng.random() < blur_prob else 0.0
    solarize = float(rng.random() < solarize_prob)
    return [b, c, s, gray, sigma, solarize]


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur; ``sigma[N]`` in pixels, 0 leaves an image unchanged."""
    n, ch, h, w = x.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    radius = max(0, min(radius, (min(h, w) - 1) // 2))
    if radius == 0:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp(min=1e-3).to(x.dtype).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe) ** 2)
    delta = (offsets == 0).to(x.dtype).view(1, -1).expand(n, -1)
    kernel = torch.where((sigma > 0).view(n, 1), kernel, delta)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(ch, dim=0)  # [N*C, K]
    y = x.reshape(1, n * ch, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kernel.view(n * ch, 1, 1, -1), groups=n * ch)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.reshape(n, ch, h, w)


def photometric(images: torch.Tensor, params: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Batched jitter/grayscale/blur/solarize: uint8 or [0,1] ``[N,3,H,W]`` + ``params[N,6]``.

    Returns float32 images, ImageNet-normalised when ``normalize`` (the backbone's input).
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    p = params.to(device=x.device, dtype=torch.float32)
    view = (-1, 1, 1, 1)
    x = (x * p[:, 0].view(view)).clamp(0, 1)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * p[:, 1].view(view) + mean).clamp(0, 1)
    gray = _luma(x)
    x = ((x - gray) * p[:, 2].view(view) + gray).clamp(0, 1)
    x = torch.where(p[:, 3].view(view) > 0.5, _luma(x).expand_as(x), x)
    x = _gaussian_blur(x, p[:, 4])
    x = torch.where((p[:, 5].view(view) > 0.5) & (x >= 0.5), 1.0 - x, x)
    if normalize:
        mean_t = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std_t = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean_t) / std_t
    return x


def block_mask(
    rng: np.random.Generator, h: int, w: int, ratio: float, min_block: int = 4
) -> np.ndarray:
    """iBOT block mask ``[h, w]`` bool with about ``ratio * h * w`` patches in rectangles."""
    target = int(round(ratio * h * w))
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(50):
        missing = target - int(mask.sum())
        if missing <= 0:
            break
        area = rng.uniform(min(min_block, missing), max(min(min_block, missing), missing))
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (0 < bh <= h and 0 < bw <= w):
            continue
        y0 = int(rng.integers(0, h - bh + 1))
        x0 = int(rng.integers(0, w - bw + 1))
        mask[y0 : y0 + bh, x0 : x0 + bw] = True
    return mask
