"""The convolutional stem: same token grid as a patchify ViT, masks, export round trip, errors."""

from __future__ import annotations

import pytest
import torch

from train.models import build_backbone, export_backbone, load_backbone_for_eval, model_kwargs
from train.models.pretrained import load_pretrained_backbone
from train.models.stem import ConvStemPatchEmbed, stem_channels


def _kwargs(stem=True, patch=8):
    return model_kwargs(
        "vit_tiny_patch16_224", 32, patch_size=patch, embed_dim=48, depth=2, num_heads=2,
        conv_stem=stem,
    )  # fmt: skip


def test_stem_channels_double_up_to_half_the_width():
    assert stem_channels(16, 256) == [16, 32, 64, 128]
    assert stem_channels(8, 384) == [48, 96, 192]
    with pytest.raises(ValueError, match="power-of-two"):
        stem_channels(14, 384)


def test_conv_stem_keeps_the_token_grid_and_masks():
    torch.manual_seed(0)
    bb = build_backbone(_kwargs())
    assert isinstance(bb.vit.patch_embed, ConvStemPatchEmbed)
    assert isinstance(bb.vit.patch_embed.proj, torch.nn.Sequential)
    x = torch.randn(2, 3, 32, 48)
    out = bb(x)
    assert out["patches"].shape == (2, 4 * 6, 48) and out["hw"] == (4, 6)
    # Local crops of another size go through the same weights.
    assert bb(torch.randn(2, 3, 16, 16))["hw"] == (2, 2)
    masks = torch.zeros(2, 4, 6, dtype=torch.bool)
    masks[0, :2] = True
    masked = bb(x, masks)
    assert torch.allclose(masked["patches"][1], out["patches"][1], atol=1e-6)
    assert not torch.allclose(masked["patches"][0], out["patches"][0], atol=1e-3)
    # A patch's embedding sees its neighbours (3x3 convolutions), unlike a patchify conv.
    y = x.clone()
    y[:, :, :, 8:16] += 1.0  # change only the second column of patches
    emb, emb_y = bb.vit.patch_embed(x), bb.vit.patch_embed(y)  # NHWC
    assert not torch.allclose(emb[:, :, 0], emb_y[:, :, 0], atol=1e-4)
    plain = build_backbone(_kwargs(stem=False)).vit.patch_embed
    assert torch.allclose(plain(x)[:, :, 0], plain(y)[:, :, 0])


def test_conv_stem_export_rebuilds_for_eval(tmp_path):
    torch.manual_seed(0)
    kwargs = _kwargs()
    assert kwargs["conv_stem"] is True
    bb = build_backbone(kwargs).eval()
    path = export_backbone(bb, kwargs, str(tmp_path / "backbone.pt"))
    loaded, _ = load_backbone_for_eval(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x)["cls"], bb(x)["cls"], atol=1e-6)
    assert "conv_stem" not in _kwargs(stem=False)  # older exports rebuild unchanged


def test_a_checkpoint_with_the_other_embedding_says_which_setting_fits(tmp_path):
    torch.manual_seed(0)
    linear = build_backbone(_kwargs(stem=False))
    stem = build_backbone(_kwargs(stem=True))
    torch.save(linear.state_dict(), tmp_path / "linear.pt")
    torch.save(stem.state_dict(), tmp_path / "stem.pt")
    with pytest.raises(ValueError, match="one linear map: set model.conv_stem=false"):
        load_pretrained_backbone(build_backbone(_kwargs(stem=True)), str(tmp_path / "linear.pt"))
    with pytest.raises(ValueError, match="convolutional stem: set model.conv_stem=true"):
        load_pretrained_backbone(build_backbone(_kwargs(stem=False)), str(tmp_path / "stem.pt"))
    fresh = build_backbone(_kwargs(stem=True))
    load_pretrained_backbone(fresh, str(tmp_path / "stem.pt"))  # same embedding: loads
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x)["cls"], stem.eval()(x)["cls"])


def test_conv_stem_refuses_an_eva_arch():
    with pytest.raises(ValueError, match="VisionTransformer"):
        build_backbone(
            model_kwargs("vit_small_patch16_dinov3_qkvb", 32, embed_dim=48, depth=1, num_heads=2,
                         conv_stem=True)
        )  # fmt: skip
