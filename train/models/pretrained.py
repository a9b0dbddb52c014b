"""Start from a local DINOv2 / DINOv3 backbone checkpoint (no hub downloads).

Official checkpoints (``dinov2_vits14_pretrain.pth``, ``dinov3_vits16_pretrain_*.pth``) use
their own key names; timm checkpoints and phieat exports already match. ``map_official_keys``
renames the official keys to the timm model inside ``Backbone`` (``vit.``) and keeps the
released ``mask_token``:

==============================  ====================================
DINOv2 / DINOv3 key             Backbone key
==============================  ====================================
cls_token, pos_embed            vit.cls_token, vit.pos_embed
register_tokens (v2)            vit.reg_token (CLS position folded into cls_token)
storage_tokens (v3)             vit.reg_token
mask_token [1, D]               mask_token
blocks.<c>.<i>.* (chunked v2)   vit.blocks.<i>.*
blocks.i.ls1.gamma (v3)         vit.blocks.i.gamma_1 (EVA naming)
blocks.i.mlp.w12 / w3 (v2 g)    vit.blocks.i.mlp.fc1 / fc2
blocks.i.mlp.w1 / w2 / w3 (v3)  vit.blocks.i.mlp.fc1_g / fc1_x / fc2
blocks.i.attn.qkv.bias (v3)     vit.blocks.i.attn.q_bias, v_bias
rope_embed.periods, *bias_mask  (dropped: recomputed / constant)
==============================  ====================================

Position embeddings are resampled to the model's grid and patch-embedding kernels to its
patch size, so a 518 px DINOv2 checkpoint initialises a 224 px model.
"""

from __future__ import annotations

import logging
import re

import fsspec
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from train.models.backbone import Backbone

log = logging.getLogger("phieat.train")


def detect_format(state_dict: dict) -> str:
    """``"dinov3"``, ``"dinov2"``, ``"backbone"`` (phieat/timm names under ``vit.``) or ``"timm"``."""
    if "storage_tokens" in state_dict or any(k.startswith("rope_embed.") for k in state_dict):
        return "dinov3"
    if any(k.startswith("vit.") for k in state_dict):
        return "backbone"
    if "mask_token" in state_dict or "register_tokens" in state_dict:
        return "dinov2"
    if any(".ls1.gamma" in k for k in state_dict) and "pos_embed" in state_dict:
        return "dinov2"
    return "timm"


def map_official_keys(state_dict: dict, fmt: str) -> dict:
    """Rename an official DINOv2/DINOv3 (or timm) backbone state dict to ``Backbone`` keys."""
    out: dict = {}
    state_dict = dict(state_dict)
    if fmt == "dinov2" and "register_tokens" in state_dict and "pos_embed" in state_dict:
        # With registers timm adds position embeddings to patches only (no_embed_class):
        # fold the CLS position into the CLS token and drop it from the table.
        pos = state_dict.pop("pos_embed")
        state_dict["cls_token"] = state_dict["cls_token"] + pos[:, :1]
        state_dict["pos_embed"] = pos[:, 1:]
    for key, value in state_dict.items():
        if fmt == "backbone":
            out[key] = value
            continue
        if (
            key.endswith(".bias_mask")
            or key.startswith("rope_embed.")
            or key.startswith("local_cls_norm")
        ):
            continue
        if key.startswith(("head.", "dino_head.", "ibot_head.")):
            continue
        if key == "mask_token":
            out["mask_token"] = value.reshape(1, -1)
            continue
        new = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # chunked blocks (v2)
        new = new.replace("register_tokens", "reg_token").replace("storage_tokens", "reg_token")
        if fmt == "dinov2":
            new = new.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        if fmt == "dinov3":
            new = new.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
            new = new.replace(".mlp.w1.", ".mlp.fc1_g.").replace(".mlp.w2.", ".mlp.fc1_x.")
            new = new.replace(".mlp.w3.", ".mlp.fc2.")
            if new.endswith(".attn.qkv.bias"):
                q_bias, _, v_bias = value.chunk(3, dim=-1)  # the key bias is constant 0
                out["vit." + new.replace("qkv.bias", "q_bias")] = q_bias
                out["vit." + new.replace("qkv.bias", "v_bias")] = v_bias
                continue
        out["vit." + new] = value
    return out


def _adapt_shapes(backbone: Backbone, state_dict: dict) -> dict:
    target = backbone.state_dict()
    vit = backbone.vit
    key = "vit.patch_embed.proj.weight"
    if key in state_dict and key in target and state_dict[key].shape[-2:] != target[key].shape[-2:]:
        state_dict[key] = resample_patch_embed(state_dict[key], list(target[key].shape[-2:]))
    key = "vit.pos_embed"
    if key in state_dict and key in target and state_dict[key].shape != target[key].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else 1
        old_tokens = state_dict[key].shape[1] - prefix
        side = int(round(old_tokens**0.5))
        state_dict[key] = resample_abs_pos_embed(
            state_dict[key],
            new_size=list(vit.patch_embed.grid_size),
            old_size=[side, side],
            num_prefix_tokens=prefix,
        )
    return state_dict


def load_pretrained_backbone(backbone: Backbone, path: str) -> dict:
    """Load a local (or fsspec) backbone checkpoint into ``backbone``; returns a summary.

    Raises ``ValueError`` naming the file and the keys that do not fit.
    """
    with fsspec.open(path, "rb") as handle:
        raw = torch.load(handle, map_location="cpu", weights_only=True)
    for wrapper in ("teacher_backbone", "state_dict", "model", "teacher"):
        if isinstance(raw, dict) and wrapper in raw and isinstance(raw[wrapper], dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"model.pretrained {path}: no state dict found")
    raw = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in raw.items()}
    fmt = detect_format(raw)
    state = _adapt_shapes(backbone, map_official_keys(raw, fmt))
    target = backbone.state_dict()
    unexpected = sorted(k for k in state if k not in target)
    mismatched = sorted(k for k in state if k in target and state[k].shape != target[k].shape)
    missing = sorted(k for k in target if k not in state and k != "mask_token")
    if unexpected or mismatched or missing:
        stem = any(k.startswith("vit.patch_embed.proj.") for k in missing + unexpected)
        hint = ""
        if stem and "vit.patch_embed.proj.weight" in state:
            hint = "; the checkpoint embeds patches with one linear map: set model.conv_stem=false"
        elif stem:
            hint = "; the checkpoint has a convolutional stem: set model.conv_stem=true"
        raise ValueError(
            f"model.pretrained {path} ({fmt} format) does not fit model.arch {backbone.arch}: "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}, wrong shape {mismatched[:6]}"
            + hint
        )
    backbone.load_state_dict(state, strict=False)
    log.info("initialised %s from %s (%s format, %d tensors)", backbone.arch, path, fmt, len(state))
    return {"path": path, "format": fmt, "tensors": len(state)}
