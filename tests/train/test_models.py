"""Backbone, heads, the evaluation API and the DINOv2/DINOv3 checkpoint key mapping."""

from __future__ import annotations

import pytest
import torch

from train.models import (
    DINOHead,
    build_backbone,
    export_backbone,
    extract,
    load_backbone_for_eval,
    model_kwargs,
)
from train.models.pretrained import detect_format, load_pretrained_backbone

D, DEPTH, HEADS = 48, 2, 2


def _kwargs(arch="vit_tiny_patch16_224", img_size=32, patch=8, reg=-1):
    return model_kwargs(
        arch, img_size, patch_size=patch, embed_dim=D, depth=DEPTH, num_heads=HEADS, reg_tokens=reg
    )


def test_backbone_shapes_and_masking():
    torch.manual_seed(0)
    bb = build_backbone(_kwargs())
    x = torch.randn(2, 3, 32, 48)
    out = bb(x)
    assert (
        out["cls"].shape == (2, D) and out["patches"].shape == (2, 4 * 6, D) and out["hw"] == (4, 6)
    )
    masks = torch.zeros(2, 4, 6, dtype=torch.bool)
    masks[0, :2] = True
    masked = bb(x, masks)
    # Sample 1 has no masked patch: identical output; sample 0 changes.
    assert torch.allclose(masked["patches"][1], out["patches"][1], atol=1e-6)
    assert not torch.allclose(masked["patches"][0, :12], out["patches"][0, :12], atol=1e-3)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        bb(torch.randn(1, 3, 30, 32))


def test_dino_head_prototypes_unit_norm():
    head = DINOHead(D, prototypes=64, hidden=32, bottleneck=16, layers=3)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)
    logits = head(torch.randn(5, D))
    assert logits.shape == (5, 64)
    assert logits.abs().max() <= 1.0 + 1e-5  # cosine of unit vectors


def test_export_and_load_for_eval(tmp_path):
    torch.manual_seed(0)
    kwargs = _kwargs()
    bb = build_backbone(kwargs)
    path = export_backbone(
        bb,
        kwargs,
        str(tmp_path / "export" / "backbone.pt"),
        {"step": 7, "physical_augmentation": True},
    )
    loaded, info = load_backbone_for_eval(tmp_path)  # out_dir form
    assert (
        info["patch_size"] == 8
        and info["embed_dim"] == D
        and info["step"] == 7
        and info["source"] == path
    )
    assert info["physical_augmentation"] is True
    images = torch.rand(3, 3, 32, 40)
    feats = extract(loaded, images)
    assert feats["cls"].shape == (3, D) and feats["patches"].shape == (3, 4, 5, D)
    bb.eval()
    ref = bb(bb.normalize(images))
    assert torch.allclose(feats["cls"], ref["cls"], atol=1e-5)
    torch.load(path, weights_only=True)


def _official_dinov2(arch_d=D, depth=DEPTH, grid=37, reg=0, patch=14):
    g = torch.Generator().manual_seed(1)
    sd = {
        "cls_token": torch.randn(1, 1, arch_d, generator=g),
        "pos_embed": torch.randn(1, 1 + grid * grid, arch_d, generator=g),
        "mask_token": torch.randn(1, arch_d, generator=g),
        "patch_embed.proj.weight": torch.randn(arch_d, 3, patch, patch, generator=g),
        "patch_embed.proj.bias": torch.randn(arch_d, generator=g),
        "norm.weight": torch.randn(arch_d, generator=g),
        "norm.bias": torch.randn(arch_d, generator=g),
    }
    if reg:
        sd["register_tokens"] = torch.randn(1, reg, arch_d, generator=g)
    for i in range(depth):
        p = f"blocks.{i}."
        for name, shape in [
            ("norm1.weight", (arch_d,)), ("norm1.bias", (arch_d,)),
            ("attn.qkv.weight", (3 * arch_d, arch_d)), ("attn.qkv.bias", (3 * arch_d,)),
            ("attn.proj.weight", (arch_d, arch_d)), ("attn.proj.bias", (arch_d,)),
            ("ls1.gamma", (arch_d,)), ("norm2.weight", (arch_d,)), ("norm2.bias", (arch_d,)),
            ("mlp.fc1.weight", (4 * arch_d, arch_d)), ("mlp.fc1.bias", (4 * arch_d,)),
            ("mlp.fc2.weight", (arch_d, 4 * arch_d)), ("mlp.fc2.bias", (arch_d,)),
            ("ls2.gamma", (arch_d,)),
        ]:  # fmt: skip
            sd[p + name] = torch.randn(*shape, generator=g)
    return sd


@pytest.mark.parametrize("reg", [0, 4])
def test_dinov2_official_keys_load(tmp_path, reg):
    sd = _official_dinov2(reg=reg)
    assert detect_format(sd) == "dinov2"
    path = tmp_path / "dinov2.pth"
    torch.save(sd, path)
    arch = "vit_small_patch14_reg4_dinov2" if reg else "vit_small_patch14_dinov2"
    bb = build_backbone(model_kwargs(arch, 56, embed_dim=D, depth=DEPTH, num_heads=HEADS))
    summary = load_pretrained_backbone(bb, str(path))
    assert summary["format"] == "dinov2"
    state = bb.state_dict()
    assert torch.equal(state["vit.blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"])
    assert torch.equal(state["vit.blocks.0.ls2.gamma"], sd["blocks.0.ls2.gamma"])
    assert torch.equal(state["mask_token"], sd["mask_token"])
    if reg:
        assert torch.equal(state["vit.reg_token"], sd["register_tokens"])
        assert torch.allclose(state["vit.cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
        assert state["vit.pos_embed"].shape == (1, 16, D)  # 37x37 resampled to 4x4
    else:
        assert state["vit.pos_embed"].shape == (1, 17, D)
        assert torch.equal(state["vit.pos_embed"][:, 0], sd["pos_embed"][:, 0])


def test_dinov3_official_keys_load(tmp_path):
    g = torch.Generator().manual_seed(2)
    sd = {
        "cls_token": torch.randn(1, 1, D, generator=g),
        "storage_tokens": torch.randn(1, 4, D, generator=g),
        "mask_token": torch.randn(1, D, generator=g),
        "patch_embed.proj.weight": torch.randn(D, 3, 16, 16, generator=g),
        "patch_embed.proj.bias": torch.randn(D, generator=g),
        "rope_embed.periods": torch.randn(D // HEADS // 4, generator=g),
        "norm.weight": torch.randn(D, generator=g),
        "norm.bias": torch.randn(D, generator=g),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for name, shape in [
            ("norm1.weight", (D,)), ("norm1.bias", (D,)), ("attn.qkv.weight", (3 * D, D)),
            ("attn.qkv.bias", (3 * D,)), ("attn.qkv.bias_mask", (3 * D,)),
            ("attn.proj.weight", (D, D)), ("attn.proj.bias", (D,)), ("ls1.gamma", (D,)),
            ("norm2.weight", (D,)), ("norm2.bias", (D,)), ("mlp.fc1.weight", (4 * D, D)),
            ("mlp.fc1.bias", (4 * D,)), ("mlp.fc2.weight", (D, 4 * D)), ("mlp.fc2.bias", (D,)),
            ("ls2.gamma", (D,)),
        ]:  # fmt: skip
            sd[p + name] = torch.randn(*shape, generator=g)
    assert detect_format(sd) == "dinov3"
    path = tmp_path / "dinov3.pth"
    torch.save(sd, path)
    bb = build_backbone(
        model_kwargs("vit_small_patch16_dinov3_qkvb", 64, embed_dim=D, depth=DEPTH, num_heads=HEADS)
    )
    load_pretrained_backbone(bb, str(path))
    state = bb.state_dict()
    assert torch.equal(state["vit.reg_token"], sd["storage_tokens"])
    assert torch.equal(state["vit.blocks.1.gamma_1"], sd["blocks.1.ls1.gamma"])
    assert torch.equal(state["vit.blocks.0.attn.q_bias"], sd["blocks.0.attn.qkv.bias"][:D])
    assert torch.equal(state["vit.blocks.0.attn.v_bias"], sd["blocks.0.attn.qkv.bias"][2 * D :])
    out = bb(torch.randn(1, 3, 32, 32))
    assert out["patches"].shape == (1, 4, D) and torch.isfinite(out["cls"]).all()


def test_pretrained_mismatch_names_keys(tmp_path):
    sd = _official_dinov2(depth=3)
    torch.save(sd, tmp_path / "bad.pth")
    bb = build_backbone(
        model_kwargs("vit_small_patch14_dinov2", 56, embed_dim=D, depth=DEPTH, num_heads=HEADS)
    )
    with pytest.raises(ValueError, match=r"bad.pth.*unexpected \['vit.blocks.2"):
        load_pretrained_backbone(bb, str(tmp_path / "bad.pth"))
