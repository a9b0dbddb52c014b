"""Models: timm ViT backbone, DINO/iBOT/contrastive heads, and the stable evaluation API.

Evaluation API (stable; used by ``train.eval``)::

    from train.models import load_backbone_for_eval, extract

    backbone, info = load_backbone_for_eval("out/tiny/export/backbone.pt")  # or a checkpoint / out_dir
    feats = extract(backbone, images)   # images: float [B, 3, H, W] RGB in [0, 1]
    feats["cls"]       # [B, D]        final-norm CLS token
    feats["patches"]   # [B, h, w, D]  final-norm patch tokens, h = H // p, w = W // p

``extract`` normalises with ImageNet mean/std itself, runs without gradients in eval mode on
the backbone's device, and returns float32 tensors. H and W must be multiples of
``info["patch_size"]`` (``ValueError`` otherwise; resize or crop first). ``info`` holds
``arch``, ``patch_size``, ``embed_dim``, ``img_size`` (training global crop size),
``step``, ``physical_augmentation`` (False for the photometric baseline), ``source`` (the
file read) and ``config`` (the resolved training config, a dict, or None).

``load_backbone_for_eval`` accepts an export written by ``export_backbone`` (the trainer
writes ``<out_dir>/export/backbone.pt`` at the end), a training checkpoint (its EMA teacher
backbone is used), an ``out_dir`` (export if present, else the newest checkpoint), or any
fsspec URL of such a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import torch

from train.checkpoint import atomic_torch_save
from train.models.backbone import Backbone, build_backbone, model_kwargs
from train.models.heads import DINOHead, Predictor, ProjectionHead

__all__ = [
    "Backbone",
    "DINOHead",
    "EXPORT_FORMAT",
    "Predictor",
    "ProjectionHead",
    "build_backbone",
    "export_backbone",
    "extract",
    "load_backbone_for_eval",
    "model_kwargs",
]

EXPORT_FORMAT = "phieat-backbone-v1"


def export_backbone(
    backbone: Backbone | dict, kwargs: dict, path: str, extra: dict | None = None
) -> str:
    """Write a backbone (module or its state dict) and the kwargs that rebuild it to ``path``.

    Written atomically; ``extra`` adds plain metadata (``step``, ``config``,
    ``physical_augmentation`` ...). The file loads with ``torch.load(..., weights_only=True)``.
    """
    source = backbone.state_dict() if isinstance(backbone, torch.nn.Module) else backbone
    state = {k: v.detach().to("cpu").clone() for k, v in source.items()}
    payload = {"format": EXPORT_FORMAT, "model": dict(kwargs), "state_dict": state, **(extra or {})}
    atomic_torch_save(payload, path)
    return path


def _resolve_source(source: str | os.PathLike) -> str:
    text = os.fspath(source)
    if "://" in text and not text.startswith("file://"):
        return text
    path = Path(text.removeprefix("file://"))
    if path.is_dir():
        export = path / "export" / "backbone.pt"
        if export.exists():
            return str(export)
        ckpts = (
            sorted((path / "checkpoints").glob("ckpt-*.pt"))
            if (path / "checkpoints").is_dir()
            else []
        )
        ckpts = ckpts or sorted(path.glob("ckpt-*.pt"))
        if not ckpts:
            raise FileNotFoundError(
                f"{path}: no export/backbone.pt and no checkpoints/ckpt-*.pt inside"
            )
        return str(ckpts[-1])
    if not path.exists():
        raise FileNotFoundError(f"backbone file {path} does not exist")
    return str(path)


def load_backbone_for_eval(
    source: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Backbone, dict]:
    """Load a trained backbone for evaluation: ``(backbone in eval mode, info)``; see the module doc."""
    path = _resolve_source(source)
    with fsspec.open(path, "rb") as handle:
        payload = torch.load(handle, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a phieat export or checkpoint")
    if payload.get("format") == EXPORT_FORMAT:
        kwargs, state = payload["model"], payload["state_dict"]
    elif "teacher" in payload and "backbone_kwargs" in payload:
        kwargs = payload["backbone_kwargs"]
        prefix = "backbone."
        state = {k[len(prefix) :]: v for k, v in payload["teacher"].items() if k.startswith(prefix)}
    else:
        raise ValueError(
            f"{path}: neither a {EXPORT_FORMAT} export nor a phieat training checkpoint"
        )
    backbone = build_backbone(kwargs)
    backbone.load_state_dict(state, strict=True)
    backbone.to(device).eval()
    config = payload.get("config")
    physical = payload.get("physical_augmentation")
    if physical is None and isinstance(config, dict):
        physical = config.get("data", {}).get("physical_augmentation")
    info = {
        "arch": backbone.arch,
        "patch_size": backbone.patch_size,
        "embed_dim": backbone.embed_dim,
        "img_size": int(kwargs["img_size"]),
        "step": int(payload.get("step", 0)),
        "physical_augmentation": physical,
        "source": path,
        "config": config,
    }
    return backbone, info


@torch.no_grad()
def extract(backbone: Backbone, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``images[B,3,H,W]`` in [0, 1] -> ``{"cls": [B,D], "patches": [B,h,w,D]}`` (float32)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    was_training = backbone.training
    backbone.eval()
    try:
        device = backbone.mean.device
        x = backbone.normalize(images.to(device=device, dtype=torch.float32))
        out = backbone(x)
    finally:
        backbone.train(was_training)
    h, w = out["hw"]
    cls = out["cls"].float()
    patches = out["patches"].float().reshape(cls.shape[0], h, w, -1)
    return {"cls": cls, "patches": patches}
