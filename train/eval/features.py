"""Images in, CLS and patch features out, for every kind of model the evaluation compares.

An extractor (``train.eval.extractor``: the call signature and the ``Features`` it returns)
turns ``(B, H, W, 3)`` uint8 images into ``(B, D)`` CLS and ``(B, h, w, Dp)`` patch features.
``extract_all`` runs one over a whole dataset in batches. ``BackboneExtractor`` wraps the
trainer's backbone (``train.models.load_backbone_for_eval`` / ``extract``); ``load_model``
turns a ``--model`` spec of ``phieat-eval`` into an extractor (see ``SPEC_HELP``), the
hand-crafted baseline (``train.eval.baselines``) included.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.eval import baselines
from train.eval.extractor import Extractor, Features

logger = logging.getLogger("phieat.train")


def extract_all(
    extractor: Extractor,
    images: np.ndarray,
    masks: np.ndarray | None = None,
    batch_size: int = 32,
) -> Features:
    """Run ``extractor`` over ``images`` ``(N, H, W, 3)`` uint8 in batches; concatenate."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    cls, patches = [], []
    for start in range(0, images.shape[0], batch_size):
        stop = start + batch_size
        out = extractor(images[start:stop], None if masks is None else masks[start:stop])
        cls.append(np.asarray(out.cls, np.float32))
        patches.append(np.asarray(out.patches, np.float32))
    return Features(np.concatenate(cls), np.concatenate(patches))


def _round_down(size: int, patch: int) -> int:
    return max(patch, size - size % patch)


def extract_native(
    extractor: Extractor,
    images: np.ndarray,
    masks: np.ndarray | None = None,
    batch_size: int = 32,
    tile: int = 0,
) -> Features:
    """Like ``extract_all``, but at the images' own size ``(H, W)`` instead of the size the
    extractor was made for: a ``BackboneExtractor`` resizes to ``H x W`` rounded down to a
    multiple of its patch size (timm ViTs built with ``dynamic_img_size``: a 256 px image with
    patch 16 gives a 16 x 16 grid); for ``baselines.PixelStats`` the images (and masks) are
    resized to that rounding of its patch size; any other extractor gets them as they are.
    Used for selection views rendered larger than the object views (``EvalSet.native``).

    ``tile`` > 0 (backbones only): cut each image into ``tile`` x ``tile`` pixel tiles, run
    each tile at the size the backbone was trained on, and stitch the tiles' patch grids back
    into one grid: a 256 px scene in 64 px tiles gives a patch-16 ViT the same 16 x 16 grid,
    each token seeing only its tile, as in training, instead of a 256-token sequence with
    interpolated position embeddings. The CLS feature is the mean of the tiles'."""
    if isinstance(extractor, BackboneExtractor):
        if tile:
            return _extract_tiled(extractor, images, tile, batch_size)
        return extract_all(extractor.at_native_size(), images, masks, batch_size)
    if isinstance(extractor, baselines.PixelStats):
        p = extractor.patch_size
        h, w = images.shape[1:3]
        size = (_round_down(h, p), _round_down(w, p))
        if size != (h, w):
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
            images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            if masks is not None:
                rows = np.arange(size[0]) * h // size[0]
                cols = np.arange(size[1]) * w // size[1]
                masks = np.asarray(masks)[:, rows][:, :, cols]
    return extract_all(extractor, images, masks, batch_size)


def _extract_tiled(
    extractor: BackboneExtractor, images: np.ndarray, tile: int, batch_size: int
) -> Features:
    n, h, w, _ = images.shape
    if tile % extractor.patch_size or h % tile or w % tile:
        raise ValueError(
            f"selection tile {tile} must be a multiple of the patch size "
            f"{extractor.patch_size} and divide the {h}x{w} scene views"
        )
    rows, cols = h // tile, w // tile
    tiles = images.reshape(n, rows, tile, cols, tile, 3).transpose(0, 1, 3, 2, 4, 5)
    tiles = np.ascontiguousarray(tiles.reshape(n * rows * cols, tile, tile, 3))
    native = extractor.at_native_size()  # each tile at its own size: no resize
    out = extract_all(native, tiles, None, batch_size)
    g = tile // extractor.patch_size
    grid = out.patches.reshape(n, rows, cols, g, g, -1).transpose(0, 1, 3, 2, 4, 5)
    cls = out.cls.reshape(n, rows * cols, -1).mean(1)
    return Features(cls, np.ascontiguousarray(grid.reshape(n, rows * g, cols * g, -1)))


class BackboneExtractor:
    """CLS and patch features of a trainer ``Backbone`` through ``train.models.extract``.

    Images are scaled to [0, 1] and resized (bilinear, antialiased) to ``image_size``
    rounded down to a multiple of the patch size; ``info`` is what
    ``load_backbone_for_eval`` returned (or a similar dict) and ends up in the report.
    ``at_native_size()`` is the same backbone keeping each batch's own size (rounded down
    to a multiple of the patch size).
    """

    def __init__(
        self, backbone: torch.nn.Module, info: dict, image_size: int, device: str = "cpu"
    ) -> None:
        self.backbone = backbone.eval().to(device)
        self.info = dict(info)
        self.patch_size = int(info.get("patch_size") or backbone.patch_size)
        self.image_size: int | None = _round_down(image_size, self.patch_size)
        self.info["eval_image_size"] = self.image_size

    def at_native_size(self) -> BackboneExtractor:
        """This extractor (the same backbone, not a copy of it) without the resize to
        ``image_size``: images keep their size, rounded down to a multiple of the patch."""
        out = copy.copy(self)
        out.image_size = None
        return out

    @torch.no_grad()
    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> Features:
        from train.models import extract

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        if self.image_size is None:
            size = tuple(_round_down(int(s), self.patch_size) for s in x.shape[-2:])
        else:
            size = (self.image_size, self.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
        out = extract(self.backbone, x)
        return Features(out["cls"].cpu().numpy(), out["patches"].cpu().numpy())


DEFAULT_RANDOM_ARCH = "vit_tiny_patch16_224"
SPEC_HELP = """\
pixel-stats[:PATCH]     hand-crafted colour + texture histograms (PATCH px patches, default
                        image size / 8)
random[:ARCH]           random-init ViT (timm ARCH, default vit_tiny_patch16_224 at patch 8)
random-like:CKPT        the architecture of CKPT, randomly re-initialised
pretrained:ARCH:FILE    a local DINOv2 / DINOv3 / timm backbone file, zero-shot
CKPT                    a phieat export, training checkpoint or training out_dir (path/URL)"""


def random_backbone(
    arch: str = DEFAULT_RANDOM_ARCH,
    image_size: int = 64,
    patch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
) -> BackboneExtractor:
    """A randomly initialised backbone (the untrained floor), seeded, no downloads.

    ``patch_size`` 0 keeps the architecture's own patch size.
    """
    from train.models import build_backbone, model_kwargs

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = build_backbone(model_kwargs(arch, img_size=image_size, patch_size=patch_size))
    info = {"arch": arch, "patch_size": backbone.patch_size, "init": "random", "seed": seed}
    return BackboneExtractor(backbone, info, image_size, device)


def random_like(
    source: str, image_size: int, seed: int = 0, device: str = "cpu"
) -> BackboneExtractor:
    """The architecture of a trained backbone with fresh random weights."""
    from train.models import load_backbone_for_eval

    backbone, info = load_backbone_for_eval(source)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vit = backbone.vit
        if hasattr(vit, "init_weights"):
            vit.init_weights()
        else:
            for module in vit.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    # Untrained: it must not count as a physical or photometric model in comparisons.
    info = {**info, "init": "random", "seed": seed, "config": None, "step": 0}
    info["physical_augmentation"] = None
    return BackboneExtractor(backbone, info, image_size, device)


def pretrained(arch: str, path: str, image_size: int, device: str = "cpu") -> BackboneExtractor:
    """A local DINOv2 / DINOv3 / timm backbone file loaded into the trainer's backbone."""
    from train.models import build_backbone, model_kwargs
    from train.models.pretrained import load_pretrained_backbone

    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"--model pretrained file {path!r} does not exist")
    backbone = build_backbone(model_kwargs(arch, img_size=image_size))
    report = load_pretrained_backbone(backbone, path)
    info = {"arch": arch, "patch_size": backbone.patch_size, "source": path, "load": report}
    return BackboneExtractor(backbone, info, image_size, device)


def load_model(spec: str, image_size: int, device: str = "cpu", seed: int = 0) -> Extractor:
    """Turn a ``--model`` value (after ``NAME=``) into an extractor; see ``SPEC_HELP``."""
    kind, _, rest = spec.partition(":")
    if kind == "pixel-stats":
        patch = int(rest) if rest else max(1, image_size // 8)
        return baselines.PixelStats(patch_size=patch)
    if kind == "random":
        # The default tiny ViT gets patch 8 so a 64 px image still has an 8 x 8 grid.
        return random_backbone(
            rest or DEFAULT_RANDOM_ARCH, image_size, 0 if rest else 8, seed, device
        )
    if kind == "random-like":
        if not rest:
            raise ValueError("--model NAME=random-like:CKPT needs a checkpoint after the colon")
        return random_like(rest, image_size=image_size, seed=seed, device=device)
    if kind == "pretrained":
        arch, _, path = rest.partition(":")
        if not arch or not path:
            raise ValueError(f"--model NAME=pretrained:ARCH:FILE, got {spec!r}")
        return pretrained(arch, path, image_size=image_size, device=device)
    return load_checkpoint(spec, image_size=image_size, device=device)


def load_checkpoint(path: str, image_size: int, device: str = "cpu") -> BackboneExtractor:
    """A trained backbone from a phieat export, checkpoint or out_dir."""
    from train.models import load_backbone_for_eval

    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"--model checkpoint {path!r} does not exist")
    backbone, info = load_backbone_for_eval(path, device=device)
    return BackboneExtractor(backbone, info, image_size, device)
