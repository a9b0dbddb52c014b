"""Augmentations: mask-aware multi-crop, mild photometric jitter, blur, solarize, iBOT block masks.

Every random choice is drawn in the data worker from the sample's own
``numpy.random.Generator`` (seeded from seed, epoch, stream and sample index), so a batch
is the same whichever device applies it. The work is split in two:

* geometry (``crop_box`` + ``render_crop``): the crop box keeps at least
  ``min_object_fraction`` object pixels when the view's object is known (``ObjectGrid``: the
  bounding box and coarse occupancy grid the renderer writes into the view's json, or the same
  computed from the view's mask in older shards; no mask is decoded otherwise); in the worker each
  crop is one antialiased bilinear resize of a uint8 tensor (torch's vectorised uint8 kernel,
  about twice as fast as PIL ``resize(box=...)``). With ``crops.decode_on_device`` the worker
  only draws the boxes and ``cut_crops`` cuts every crop of a batch on the training device
  with two batched matmuls whose weights are the same antialiased bilinear filter;
* photometric (``photometric``): batched tensor ops taking a per-crop parameter table
  (``PARAMS``); run in the worker (default) or on the training device
  (``crops.on_device = true``), where it costs almost nothing.

Colour is part of a material (gold vs copper), so jitter defaults are milder than DINOv2's:
no hue shift and no grayscale.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from phieat import schema
from train.models.backbone import IMAGENET_MEAN, IMAGENET_STD

# Columns of the per-crop photometric parameter table.
PARAMS = ("brightness", "contrast", "saturation", "grayscale", "blur_sigma", "solarize")
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


class ObjectGrid:
    """Where a view's object is, coarsely: its bounding box and the occupancy of a ``G x G``
    grid spanning it (``phieat.schema.object_crop_meta``, read from the view's json or computed
    from its mask). All arithmetic is on integers, so every machine makes the same choices.

    * ``fraction(box)``: the box's object fraction, taking each cell's object pixels as spread
      evenly over the cell: ``sum(occupancy * overlap pixels) / (255 * box pixels)``, from a
      summed-area table of the grid (the sum is bilinear inside a cell);
    * ``centre(rng)``: one ``rng.integers`` draw ``u`` over ``sum(occupancy * cell pixels)``
      picks a cell in proportion to its object pixels and, within it, pixel
      ``(u - cells before) // occupancy`` in raster order: ``(y, x)``.
    """

    def __init__(self, box: tuple[int, int, int, int], occupancy: np.ndarray) -> None:
        x0, y0, x1, y1 = box
        side = occupancy.shape[0]
        self.xs = schema.grid_edges(x0, x1, side)
        self.ys = schema.grid_edges(y0, y1, side)
        # 255 x object pixels per cell, and their summed-area table over the cell edges.
        xs, ys = np.array(self.xs), np.array(self.ys)
        cells = occupancy * ((ys[1:] - ys[:-1])[:, None] * (xs[1:] - xs[:-1]))
        inner = cells.cumsum(axis=0).cumsum(axis=1).tolist()
        self.table = [[0] * (side + 1)] + [[0, *row] for row in inner]
        self.cumulative = cells.ravel().cumsum().tolist()
        self.total = self.cumulative[-1]
        if self.total <= 0:
            raise ValueError(f"object grid over {box} holds no object pixel")

    @classmethod
    def from_meta(cls, view: Mapping, width: int, height: int) -> ObjectGrid | None:
        """From a view's ``object_bbox`` / ``object_grid`` (None for a view without object)."""
        bbox = view[schema.OBJECT_BBOX]
        if bbox is None:
            return None
        cells = view[schema.OBJECT_GRID]
        occupancy = np.frombuffer(bytes.fromhex(cells), dtype=np.uint8)
        side = math.isqrt(len(occupancy))
        if side < 1 or side * side != len(occupancy):
            raise ValueError(
                f"{schema.OBJECT_GRID} of {len(cells)} characters is not a square grid"
            )
        box = schema.object_bbox_pixels(bbox, width, height)
        return cls(box, occupancy.reshape(side, side))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> ObjectGrid | None:
        """From a decoded bool mask ``[H, W]``: the record the renderer would have written."""
        height, width = mask.shape
        return cls.from_meta(schema.object_crop_meta(mask), width, height)

    @staticmethod
    def _locate(edges: list[int], v: int) -> tuple[int, int, int]:
        """The cell holding coordinate ``v`` (clamped to the edges): its index, ``v``'s offset
        in it and its size, never 0 (``bisect_right`` steps over empty cells, and the last
        cell is never empty)."""
        v = min(max(v, edges[0]), edges[-1])
        k = min(bisect_right(edges, v) - 1, len(edges) - 2)
        return k, v - edges[k], edges[k + 1] - edges[k]

    def _below(self, col: tuple[int, int, int], row: tuple[int, int, int]) -> int:
        """255 x the estimated object pixels left of and above a point (``_locate`` of its x
        and y): the table interpolated bilinearly inside the point's cell, in exact integer
        division (a cell's table differences are multiples of its width and height)."""
        (j, fx, w), (i, fy, h) = col, row
        t00, t01 = self.table[i][j], self.table[i][j + 1]
        t10, t11 = self.table[i + 1][j], self.table[i + 1][j + 1]
        return (
            t00
            + fy * (t10 - t00) // h
            + fx * (t01 - t00) // w
            + fx * fy * (t11 - t10 - t01 + t00) // (w * h)
        )

    def fraction(self, box: tuple[int, int, int, int]) -> float:
        x0, y0, x1, y1 = box
        left, right = self._locate(self.xs, x0), self._locate(self.xs, x1)
        top, bottom = self._locate(self.ys, y0), self._locate(self.ys, y1)
        inside = self._below(right, bottom) - self._below(left, bottom)
        inside += self._below(left, top) - self._below(right, top)
        return inside / (255 * max(1, (x1 - x0) * (y1 - y0)))

    def centre(self, rng: np.random.Generator) -> tuple[int, int]:
        u = int(rng.integers(self.total))
        cell = bisect_right(self.cumulative, u)
        before = self.cumulative[cell - 1] if cell else 0
        row, col = divmod(cell, len(self.table) - 1)
        w, h = self.xs[col + 1] - self.xs[col], self.ys[row + 1] - self.ys[row]
        weight = (self.cumulative[cell] - before) // (w * h)  # the cell's occupancy
        dy, dx = divmod((u - before) // weight, w)
        return self.ys[row] + dy, self.xs[col] + dx


def crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float],
    grid: ObjectGrid | None = None,
    min_fraction: float = 0.5,
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(x0, y0, x1, y1)``, kept on the object when ``grid`` is given.

    Draws up to ``tries`` boxes (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) and
    returns the first with at least ``min_fraction`` object pixels (``grid.fraction``), else the
    one with the most; the whole image if no draw fits. With a grid each box is centred on a
    point drawn by ``grid.centre`` (where the object is), so small objects are found in a few
    draws; without one it is placed uniformly.
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
        if grid is None:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (x0, y0, x0 + w, y0 + h)
        cy, cx = grid.centre(rng)
        x0 = min(max(cx - w // 2, 0), width - w)
        y0 = min(max(cy - h // 2, 0), height - h)
        box = (x0, y0, x0 + w, y0 + h)
        fraction = grid.fraction(box)
        if fraction >= min_fraction:
            return box
        if fraction > best_fraction:
            best, best_fraction = box, fraction
    return best


def render_crop(
    image: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool
) -> torch.Tensor:
    """Crop ``box`` of a uint8 ``image [3, H, W]`` resized to ``size`` x ``size`` (bilinear,
    antialiased when shrinking: PIL's filter) -> uint8 ``[3, size, size]``."""
    x0, y0, x1, y1 = box
    region = image[None, :, y0:y1, x0:x1]
    out = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True)[0]
    return out.flip(-1) if flip else out


def resample_weights(
    start: torch.Tensor, length: torch.Tensor, out: int, extent: int, flip: torch.Tensor
) -> torch.Tensor:
    """Rows of the antialiased bilinear filter ``render_crop`` applies, as matrices.

    ``start[N]``/``length[N]``: each crop's span on one axis (pixels); ``out``: its output
    size; ``extent``: the image's size on that axis. Returns ``[N, out, extent]`` float32 whose
    row ``i`` holds output pixel ``i``'s weights (PIL's / torch's ``antialias=True`` triangle
    filter: support 1 pixel, widened by the scale when shrinking; taps outside the span are
    dropped and the row renormalised, as cropping first does); ``flip`` reverses the rows."""
    device = start.device
    start = start.to(torch.float32).view(-1, 1, 1)
    length = length.to(torch.float32).view(-1, 1, 1)
    scale = length / out
    inv = torch.where(scale >= 1, 1.0 / scale, torch.ones_like(scale))
    i = torch.arange(out, device=device, dtype=torch.float32).view(1, -1, 1)
    i = torch.where(flip.view(-1, 1, 1), out - 1 - i, i)
    centre = scale * (i + 0.5)
    j = torch.arange(extent, device=device, dtype=torch.float32).view(1, 1, -1) - start
    weights = (1.0 - ((j + 0.5 - centre) * inv).abs()).clamp(min=0)
    weights = weights * ((j >= 0) & (j < length))
    return weights / weights.sum(dim=2, keepdim=True).clamp(min=1e-12)


def cut_crops(
    images: torch.Tensor, source: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor
) -> torch.Tensor:
    """All crops of one size from a batch of images in two batched matmuls.

    ``images [V, 3, H, W]`` (uint8 or float, on any device), ``source[N]`` the image each crop
    comes from, ``boxes [N, 4]`` ``(x0, y0, x1, y1)`` and ``flip[N]`` bool (best kept on the
    CPU: their sizes set the window each crop is read through). Each crop reads a window as
    large as the batch's largest box, not its whole image. Returns float32
    ``[N, 3, size, size]`` on the images' scale (0-255 for uint8): ``render_crop`` without
    its final rounding to uint8."""
    device = images.device
    boxes = boxes.cpu().long()
    height = int((boxes[:, 3] - boxes[:, 1]).max())
    width = int((boxes[:, 2] - boxes[:, 0]).max())
    top = boxes[:, 1].clamp(max=images.shape[2] - height)
    left = boxes[:, 0].clamp(max=images.shape[3] - width)
    ys = (top.view(-1, 1) + torch.arange(height)).to(device)
    xs = (left.view(-1, 1) + torch.arange(width)).to(device)
    src = source.to(device).view(-1, 1, 1)
    window = images.permute(0, 2, 3, 1)[src, ys.unsqueeze(2), xs.unsqueeze(1)]  # [N, h, w, 3]
    window = window.permute(0, 3, 1, 2).float()
    boxes = boxes.to(device)
    no_flip = torch.zeros(len(boxes), dtype=torch.bool, device=device)
    rows = resample_weights(
        boxes[:, 1] - top.to(device), boxes[:, 3] - boxes[:, 1], size, height, no_flip
    )
    cols = resample_weights(
        boxes[:, 0] - left.to(device), boxes[:, 2] - boxes[:, 0], size, width, flip.to(device)
    )
    return rows.unsqueeze(1) @ window @ cols.transpose(1, 2).unsqueeze(1)


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


LUMA = (0.299, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]).clamp(0, 1)


def _blur_matrices(sigma: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """``[N, size, size]``: row ``i`` holds the normalised Gaussian taps ``i - radius ..
    i + radius`` with reflect padding folded in, so one matmul blurs a whole axis."""
    n = sigma.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=sigma.device)
    taps = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.clamp(min=1e-3).view(n, 1)) ** 2)
    taps = taps / taps.sum(dim=1, keepdim=True)
    index = torch.arange(size, device=sigma.device).view(-1, 1) + offsets.view(1, -1)
    index = index.abs()
    index = torch.where(index >= size, 2 * (size - 1) - index, index)
    out = torch.zeros(n, size, size, device=sigma.device, dtype=taps.dtype)
    out.scatter_add_(2, index.expand(n, -1, -1), taps.unsqueeze(1).expand(-1, size, -1))
    return out


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (reflect padding); ``sigma[N]`` in pixels, 0 leaves an
    image unchanged. Taps reach ``ceil(3 * max sigma)`` pixels; each axis is one batched
    matmul with a banded matrix, several times faster than a grouped conv2d on one CPU core."""
    n, ch, h, w = x.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    radius = max(0, min(radius, (min(h, w) - 1) // 2))
    if radius == 0:
        return x
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    along_w = _blur_matrices(sigma, w, radius)
    along_h = along_w if h == w else _blur_matrices(sigma, h, radius)
    y = (x.reshape(n, ch * h, w) @ along_w.transpose(1, 2)).reshape(n, ch, h, w)
    return along_h.unsqueeze(1) @ y


def photometric(images: torch.Tensor, params: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Batched jitter/grayscale/blur/solarize: uint8 or [0,1] ``[N,3,H,W]`` + ``params[N,6]``.

    Returns float32 images, ImageNet-normalised when ``normalize`` (the backbone's input).
    Which steps run at all is read from ``params`` on the host (pass them on the CPU to keep
    the device free of syncs); blur and solarize touch only the images that draw them.
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    host = params.detach().to("cpu", torch.float32)
    p = host.to(x.device, non_blocking=True)
    view = (-1, 1, 1, 1)
    if (host[:, 0] != 1).any():
        x = x.mul_(p[:, 0].view(view)).clamp_(0, 1)
    luma = torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)
    if (host[:, 1] != 1).any():
        # Mean luma from the channel means (luma is linear and already in [0, 1]).
        mean = (x.mean(dim=(2, 3), keepdim=True) * luma).sum(dim=1, keepdim=True)
        contrast = p[:, 1].view(view)
        x = x.mul_(contrast).add_(mean * (1 - contrast)).clamp_(0, 1)
    if (host[:, 2] != 1).any():
        saturation = p[:, 2].view(view)
        gray = _luma(x)
        x = x.mul_(saturation).add_(gray.mul_(1 - saturation)).clamp_(0, 1)
    if (host[:, 3] > 0.5).any():
        x = torch.where(p[:, 3].view(view) > 0.5, _luma(x).expand_as(x), x)
    blurred = torch.nonzero(host[:, 4] > 0).flatten()
    if len(blurred):
        index = blurred.to(x.device)
        x = x.index_copy(0, index, _gaussian_blur(x.index_select(0, index), host[blurred, 4]))
    if (host[:, 5] > 0.5).any():
        x = torch.where((p[:, 5].view(view) > 0.5) & (x >= 0.5), 1.0 - x, x)
    if normalize:
        mean_t = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std_t = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = x.sub_(mean_t).div_(std_t)
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
