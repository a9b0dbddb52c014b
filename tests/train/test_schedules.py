"""Schedules, parameter groups (layer decay, no weight decay on norms/biases), EMA, frozen last layer."""

from __future__ import annotations

import math

import pytest
import torch

from train.config import load_config
from train.meta_arch import MetaArch
from train.optim import cosine, make_optimizer, param_groups, peak_lr, schedules


def test_cosine_warmup_and_end():
    assert cosine(0, 100, 1.0, 0.1, warmup=10) == 0.0
    assert cosine(5, 100, 1.0, 0.1, warmup=10) == pytest.approx(0.5)
    assert cosine(10, 100, 1.0, 0.1, warmup=10) == pytest.approx(1.0)
    assert cosine(55, 100, 1.0, 0.1, warmup=10) == pytest.approx(0.55)
    assert cosine(100, 100, 1.0, 0.1, warmup=10) == pytest.approx(0.1)


def test_schedules_follow_the_config():
    cfg = load_config(
        "tiny-cpu",
        [
            "optim.steps=100",
            "loss.warmup_teacher_temp_steps=10",
            "loss.teacher_temp=0.06",
            "data.batch_size=256",
            "optim.momentum_teacher=0.992",
        ],
    )
    assert peak_lr(cfg, world=4) == pytest.approx(cfg.optim.base_lr * math.sqrt(1024 / 1024))
    start, end = schedules(cfg, 0, 1), schedules(cfg, 100, 1)
    assert start["momentum"] == pytest.approx(0.992) and end["momentum"] == pytest.approx(1.0)
    assert start["teacher_temp"] == pytest.approx(0.04) and schedules(cfg, 10, 1)[
        "teacher_temp"
    ] == pytest.approx(0.06)
    assert start["wd"] == pytest.approx(0.04) and end["wd"] == pytest.approx(0.2)


def _micro_cfg(*extra):
    return load_config(
        None,
        [
            "model.arch=vit_tiny_patch16_224", "model.patch_size=8", "model.embed_dim=32", "model.depth=2",
            "model.num_heads=2", "model.head_prototypes=16", "model.head_hidden=16", "model.head_bottleneck=8",
            "crops.global_size=16", "crops.local_size=8", *extra,
        ],
    )  # fmt: skip


def test_param_groups_layer_decay_and_no_decay():
    meta = MetaArch(_micro_cfg())
    groups = param_groups(meta.student, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(meta.student.named_parameters())
    assert by_param[id(named["backbone.vit.blocks.0.attn.qkv.weight"])][
        "lr_scale"
    ] == pytest.approx(0.25)
    assert by_param[id(named["backbone.vit.blocks.1.attn.qkv.weight"])][
        "lr_scale"
    ] == pytest.approx(0.5)
    assert by_param[id(named["backbone.vit.patch_embed.proj.weight"])]["lr_scale"] == pytest.approx(
        0.125
    )
    assert by_param[id(named["dino_head.mlp.0.weight"])]["lr_scale"] == pytest.approx(1.0)
    assert by_param[id(named["backbone.vit.blocks.0.norm1.weight"])]["wd_scale"] == 0.0
    assert by_param[id(named["backbone.vit.cls_token"])]["wd_scale"] == 0.0
    assert by_param[id(named["dino_head.last_layer.weight"])]["is_last_layer"]
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_ema_update_and_teacher_has_no_grad():
    meta = MetaArch(_micro_cfg())
    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(1.0)
    before = meta.teacher.backbone.vit.cls_token.clone()
    meta.update_teacher(0.75)
    after = meta.teacher.backbone.vit.cls_token
    assert torch.allclose(after, before + 0.25, atol=1e-6)
    assert not any(p.requires_grad for p in meta.teacher.parameters())
    assert meta.teacher.dino_head is not None and not hasattr(meta.teacher, "contrast_head")
    assert (
        make_optimizer(_micro_cfg(), meta.student, torch.device("cpu")).defaults["weight_decay"]
        == 0.0
    )


def test_weight_zero_switches_a_loss_off():
    cfg = _micro_cfg("loss.ibot_weight=0", "loss.contrast_weight=0", "loss.koleo_weight=0")
    meta = MetaArch(cfg)
    assert meta.student.contrast_head is None and meta.student.ibot_head is None
    batch = {
        "global": torch.randn(4, 3, 16, 16),
        "local": torch.randn(4, 3, 8, 8),
        "masks": torch.zeros(4, 2, 2, dtype=torch.bool),
        "labels": torch.tensor([1, 2]),
    }
    losses = meta(batch, 0.04, 0)
    assert set(losses) == {"dino", "total"}
    assert torch.allclose(losses["total"], losses["dino"])


@pytest.mark.parametrize(
    "extra",
    [
        ("loss.ibot_form=regression", "loss.centering=sinkhorn"),
        ("model.ibot_separate_head=true", "loss.contrast_crops=all", "model.reg_tokens=2"),
    ],
)
def test_variants_give_finite_losses_and_gradients(extra):
    meta = MetaArch(_micro_cfg(*extra))
    batch = {
        "global": torch.randn(4, 3, 16, 16),
        "local": torch.randn(4, 3, 8, 8),
        "masks": torch.tensor([[[True, False], [False, False]]] * 4),
        "labels": torch.tensor([1, 2]),
    }
    losses = meta(batch, 0.04, 0)
    assert {"dino", "ibot", "koleo", "contrast", "total"} <= set(losses)
    losses["total"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in meta.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_teachers_stay_in_eval_mode_while_the_student_trains():
    """With drop-path on, a teacher in training mode would give random targets: the EMA and Gram
    teachers must stay in eval mode whatever mode the meta-architecture is put in."""
    meta = MetaArch(_micro_cfg("model.drop_path_rate=0.5", "loss.gram_weight=1.0"))
    meta.train()
    assert meta.student.training and meta.student.backbone.training
    for teacher in (meta.teacher, meta.gram_teacher):
        assert not any(m.training for m in teacher.modules())
    meta.teacher.train()  # a direct call cannot switch it either
    assert not any(m.training for m in meta.teacher.modules())
    # 16 images: drop-path draws one keep/drop per image and block, so two forwards of a
    # network in training mode agree only with probability 2**-16 (2 images: 1 in 4).
    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    masks = torch.zeros(16, 2, 2, dtype=torch.bool)
    with torch.no_grad():
        first = meta.teacher(x, masks, regression=False)["dino_logits"]
        again = meta.teacher(x, masks, regression=False)["dino_logits"]
        assert torch.equal(first, again)  # no drop-path in the teacher's forward
        s1 = meta.student.backbone(x)["cls"]
        s2 = meta.student.backbone(x)["cls"]
    assert not torch.equal(s1, s2)  # the student's drop-path is on (the check above can fail)
