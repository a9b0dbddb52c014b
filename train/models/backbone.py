"""ViT backbone: a timm model named in the config, with iBOT mask tokens and split outputs.

Any timm ``VisionTransformer`` (DINOv2-style ``vit_*_patch14_dinov2``, ``vit_tiny_patch16_224``
...) or ``Eva`` (DINOv3-style RoPE ``vit_*_patch16_dinov3``) works. It is built with
``dynamic_img_size=True`` so global and local crops of any size that is a multiple of the
patch size share one set of weights. Masked patches (iBOT) are replaced by a learned mask
token right after the patch embedding, through a forward hook, so the timm forward is used
unchanged for every architecture.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from train.models.stem import ConvStemPatchEmbed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_kwargs(
    arch: str,
    img_size: int,
    patch_size: int = 0,
    embed_dim: int = 0,
    depth: int = 0,
    num_heads: int = 0,
    reg_tokens: int = -1,
    drop_path_rate: float = 0.0,
    layerscale: float = 1.0e-5,
    conv_stem: bool = False,
) -> dict:
    """The keyword arguments that rebuild a backbone; stored with every export and checkpoint."""
    kwargs: dict = {
        "arch": arch,
        "img_size": int(img_size),
        "drop_path_rate": float(drop_path_rate),
    }
    if patch_size:
        kwargs["patch_size"] = int(patch_size)
    if embed_dim:
        kwargs["embed_dim"] = int(embed_dim)
    if depth:
        kwargs["depth"] = int(depth)
    if num_heads:
        kwargs["num_heads"] = int(num_heads)
    if reg_tokens >= 0:
        kwargs["reg_tokens"] = int(reg_tokens)
    if layerscale > 0:
        kwargs["layerscale"] = float(layerscale)
    if conv_stem:
        kwargs["conv_stem"] = True
    return kwargs


class Backbone(nn.Module):
    """A timm ViT plus a mask token; ``forward`` returns CLS and patch tokens.

    ``forward(images[B,3,H,W], masks[B,h,w] bool | None) -> {"cls": [B,D], "patches": [B,h*w,D],
    "hw": (h, w)}``: ``images`` are normalised (ImageNet mean/std); ``h, w = H // p, W // p``.
    """

    def __init__(self, arch: str, img_size: int, **kwargs) -> None:
        super().__init__()
        timm_kwargs: dict = {
            "pretrained": False,
            "num_classes": 0,
            "dynamic_img_size": True,
            "img_size": img_size,
            "drop_path_rate": kwargs.pop("drop_path_rate", 0.0),
        }
        for key in ("patch_size", "embed_dim", "depth", "num_heads"):
            if key in kwargs:
                timm_kwargs[key] = kwargs.pop(key)
        if "reg_tokens" in kwargs:
            reg = kwargs.pop("reg_tokens")
            timm_kwargs["num_reg_tokens" if _is_eva(arch) else "reg_tokens"] = reg
            if reg and not _is_eva(arch):
                timm_kwargs["no_embed_class"] = True
        if "layerscale" in kwargs:
            timm_kwargs["init_values"] = kwargs.pop("layerscale")
        if kwargs.pop("conv_stem", False):
            if _is_eva(arch):
                raise ValueError(
                    f"model.conv_stem needs a VisionTransformer architecture, not {arch}"
                )
            timm_kwargs["embed_layer"] = ConvStemPatchEmbed
        if kwargs:
            raise ValueError(f"unknown backbone options {sorted(kwargs)} for {arch}")
        try:
            self.vit = timm.create_model(arch, **timm_kwargs)
        except RuntimeError as exc:
            raise ValueError(
                f"model.arch {arch!r} is not a timm model this version knows ({exc}); "
                "e.g. vit_small_patch14_dinov2, vit_base_patch16_dinov3, vit_tiny_patch16_224"
            ) from exc
        self.arch = arch
        self.embed_dim: int = int(self.vit.embed_dim)
        patch = self.vit.patch_embed.patch_size
        self.patch_size: int = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.num_prefix_tokens: int = int(self.vit.num_prefix_tokens)
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._masks: torch.Tensor | None = None
        self.vit.patch_embed.register_forward_hook(self._apply_mask)

    @property
    def blocks(self) -> nn.Sequential | nn.ModuleList:
        return self.vit.blocks

    def _apply_mask(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        masks = self._masks
        if masks is None:
            return out
        token = self.mask_token.to(out.dtype)
        if out.ndim == 4:  # NHWC (dynamic image size)
            return torch.where(masks.unsqueeze(-1), token.view(1, 1, 1, -1), out)
        return torch.where(masks.flatten(1).unsqueeze(-1), token.view(1, 1, -1), out)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        batch, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {p} "
                f"of {self.arch}; choose crop sizes divisible by {p}"
            )
        h, w = height // p, width // p
        if masks is not None and masks.shape != (batch, h, w):
            raise ValueError(
                f"masks must be [B, {h}, {w}] for {height}x{width} images, got {tuple(masks.shape)}"
            )
        self._masks = masks
        try:
            tokens = self.vit.forward_features(images)
        finally:
            self._masks = None
        return {"cls": tokens[:, 0], "patches": tokens[:, self.num_prefix_tokens :], "hw": (h, w)}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the normalised input ``forward`` expects."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)


def _is_eva(arch: str) -> bool:
    return "dinov3" in arch or arch.startswith("eva")


def build_backbone(kwargs: dict) -> Backbone:
    """Build a backbone from ``model_kwargs`` output."""
    kwargs = dict(kwargs)
    arch = kwargs.pop("arch")
    img_size = kwargs.pop("img_size")
    return Backbone(arch, img_size, **kwargs)
