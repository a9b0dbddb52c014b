"""Images in, CLS and patch features out, for every kind of model the evaluation compares.

An *extractor* is any callable ``(images, masks) -> Features`` with

* ``images``: ``(B, H, W, 3)`` uint8 sRGB;
* ``masks``: ``(B, H, W)`` bool object masks, or ``None`` (extractors may ignore them);
* ``Features.cls``: ``(B, D)`` float32, ``Features.patches``: ``(B, h, w, Dp)`` float32.

``extract_all`` runs one over a whole dataset in batches. ``ViTExtractor`` wraps any torch
ViT whose ``forward_features`` returns ``(B, prefix + h*w, D)`` tokens (timm's ViTs, the
trainer's backbones); ``load_model`` turns a ``--model`` spec of ``phieat-eval`` into an
extractor: ``pixel-stats``, ``random[:ARCH]`` or a checkpoint path read by the trainer's
``train.models.load_backbone_for_eval``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("phieat.train")


@dataclass
class Features:
    """``cls`` ``(B, D)`` and ``patches`` ``(B, h, w, Dp)``, both float32 numpy arrays."""

    cls: np.ndarray
    patches: np.ndarray


Extractor = Callable[[np.ndarray, "np.ndarray | None"], Features]


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


class ViTExtractor:
    """CLS and patch tokens of a ViT backbone (``forward_features`` -> token sequence).

    Images are resized to ``image_size`` (a multiple of the patch size), scaled to [0, 1]
    and normalised with ``mean``/``std``. The first ``num_prefix_tokens`` tokens are the CLS
    (index 0) and registers; the rest form the ``(h, w)`` patch grid.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_size: int,
        patch_size: int,
        num_prefix_tokens: int = 1,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        device: str = "cpu",
    ) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        self.model = model.eval().to(device)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> Features:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        x = ((x - self.mean) / self.std).to(self.device)
        tokens = self.model.forward_features(x)
        if isinstance(tokens, dict):  # dinov2-style backbones return named token groups
            cls = tokens["x_norm_clstoken"]
            patch = tokens["x_norm_patchtokens"]
        else:
            cls = tokens[:, 0]
            patch = tokens[:, self.num_prefix_tokens :]
        side = self.image_size // self.patch_size
        if patch.shape[1] != side * side:
            raise ValueError(
                f"backbone returned {patch.shape[1]} patch tokens, expected {side}x{side} for "
                f"{self.image_size}px images with patch {self.patch_size}: check "
                "num_prefix_tokens (registers) and the patch size"
            )
        patch = patch.reshape(patch.shape[0], side, side, -1)
        return Features(cls.float().cpu().numpy(), patch.float().cpu().numpy())


DEFAULT_RANDOM_ARCH = "vit_tiny_patch16_224"


def random_vit(
    arch: str = DEFAULT_RANDOM_ARCH, image_size: int = 64, patch_size: int = 8, seed: int = 0
) -> ViTExtractor:
    """A randomly initialised timm ViT (the untrained floor), seeded, no downloads."""
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = timm.create_model(
            arch,
            pretrained=False,
            num_classes=0,
            img_size=image_size,
            patch_size=patch_size,
            dynamic_img_size=True,
        )
    return ViTExtractor(
        model,
        image_size=image_size,
        patch_size=patch_size,
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
    )


def load_model(spec: str, image_size: int, device: str = "cpu", seed: int = 0) -> Extractor:
    """Turn a ``--model`` value (after ``NAME=``) into an extractor.

    * ``pixel-stats`` (or ``pixel-stats:PATCH``): the hand-crafted colour/texture baseline;
    * ``random`` or ``random:ARCH``: a random-init timm ViT (default
      ``vit_tiny_patch16_224`` with patch 8) at the eval image size;
    * anything else: a checkpoint path or URL loaded with the trainer's
      ``train.models.load_backbone_for_eval``.
    """
    from train.eval import baselines

    if spec == "pixel-stats" or spec.startswith("pixel-stats:"):
        patch = int(spec.split(":", 1)[1]) if ":" in spec else 8
        return baselines.PixelStats(patch_size=patch)
    if spec == "random" or spec.startswith("random:"):
        arch = spec.split(":", 1)[1] if ":" in spec else DEFAULT_RANDOM_ARCH
        return random_vit(arch, image_size=image_size, patch_size=8, seed=seed)
    return load_checkpoint(spec, image_size=image_size, device=device)


def load_checkpoint(path: str, image_size: int, device: str = "cpu") -> Extractor:
    """A trained backbone from a trainer checkpoint or an exported backbone file."""
    try:
        import train.models as models
    except ImportError as exc:
        raise RuntimeError(
            f"cannot load checkpoint {path!r}: the trainer package train.models is not "
            f"importable ({exc})"
        ) from exc
    if not hasattr(models, "load_backbone_for_eval"):
        raise RuntimeError(
            "train.models has no load_backbone_for_eval(path): this trainer version cannot "
            f"load checkpoint {path!r} for evaluation"
        )
    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"--model checkpoint {path!r} does not exist")
    backbone = models.load_backbone_for_eval(path)
    return _wrap_backbone(backbone, image_size=image_size, device=device)


def _wrap_backbone(backbone: object, image_size: int, device: str) -> Extractor:
    """Adapt what the trainer returns to an extractor (see ``load_checkpoint``)."""
    if isinstance(backbone, torch.nn.Module):
        patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", 16)
        patch = patch[0] if isinstance(patch, tuple) else int(patch)
        size = image_size - image_size % patch
        return ViTExtractor(
            backbone,
            image_size=size,
            patch_size=patch,
            num_prefix_tokens=int(getattr(backbone, "num_prefix_tokens", 1)),
            device=device,
        )
    raise TypeError(
        f"train.models.load_backbone_for_eval returned {type(backbone).__name__}, "
        "expected a torch.nn.Module with forward_features"
    )
