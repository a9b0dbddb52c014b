"""Trained, random-like and pretrained backbones through the trainer's evaluation API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.eval.features import BackboneExtractor, extract_all, load_model
from train.models import build_backbone, export_backbone, model_kwargs


@pytest.fixture(scope="module")
def tiny():
    kwargs = model_kwargs("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    torch.manual_seed(0)
    return build_backbone(dict(kwargs)), kwargs


def test_export_loads_and_matches_the_backbone(tmp_path, tiny):
    backbone, kwargs = tiny
    extra = {"step": 7, "physical_augmentation": True}
    path = export_backbone(backbone, kwargs, str(tmp_path / "backbone.pt"), extra)
    ext = load_model(path, image_size=36)  # rounded down to a multiple of patch 8
    assert isinstance(ext, BackboneExtractor)
    assert ext.image_size == 32 and ext.info["step"] == 7
    assert ext.info["physical_augmentation"] is True
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    feats = extract_all(ext, images, batch_size=2)
    assert feats.cls.shape == (5, 192) and feats.patches.shape == (5, 4, 4, 192)
    ref = BackboneExtractor(backbone, {"patch_size": 8}, 32)(images)
    assert np.allclose(feats.cls, ref.cls, atol=1e-5)

    rnd = load_model(f"random-like:{path}", image_size=32, seed=1)
    other = rnd(images)
    assert other.cls.shape == feats.cls.shape and not np.allclose(other.cls, feats.cls, atol=1e-3)
    assert rnd.info["init"] == "random" and rnd.info["physical_augmentation"] is None


def test_pretrained_file_zero_shot(tmp_path):
    torch.manual_seed(1)
    src = build_backbone(model_kwargs("vit_tiny_patch16_224", img_size=32))
    torch.save(src.vit.state_dict(), tmp_path / "timm.pt")
    ext = load_model(f"pretrained:vit_tiny_patch16_224:{tmp_path / 'timm.pt'}", image_size=32)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ref = BackboneExtractor(src, {"patch_size": 16}, 32)(images)
    assert np.allclose(ext(images).cls, ref.cls, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model("pretrained:vit_tiny_patch16_224:/nowhere/missing.pt", image_size=32)
