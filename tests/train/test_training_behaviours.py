"""Training behaviours checked against their definition: the EMA of every teacher parameter,
the Gram teacher's refresh schedule, the frozen prototype layer, gradient clipping, exact
resume with drop-path and with Sinkhorn-Knopp targets, and the objective as the weighted sum
of the five terms."""

from __future__ import annotations

import json

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from train.checkpoint import load_checkpoint
from train.config import load_config
from train.diagnostics import effective_rank, target_stats
from train.losses import (
    ContrastLoss,
    DINOClsTokenLoss,
    GramLoss,
    IBOTPatchLoss,
    KoLeoLoss,
    sinkhorn_knopp,
)
from train.meta_arch import MetaArch
from train.train import main


def _micro_cfg(*extra: str):
    return load_config(
        None,
        [
            "model.arch=vit_tiny_patch16_224", "model.patch_size=8", "model.embed_dim=32",
            "model.depth=2", "model.num_heads=2", "model.head_prototypes=16", "model.head_hidden=16",
            "model.head_bottleneck=8", "crops.global_size=16", "crops.local_size=8", *extra,
        ],
    )  # fmt: skip


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- EMA


def test_ema_updates_every_teacher_parameter_exactly():
    """Every teacher parameter (backbone, DINO head, iBOT head) becomes ``m t + (1 - m) s``."""
    torch.manual_seed(0)
    meta = MetaArch(_micro_cfg("model.ibot_separate_head=true", "loss.gram_weight=1.0"))
    meta.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # student and teacher apart everywhere, by different amounts
        for p in meta.student.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    teacher_before = {n: p.clone() for n, p in meta.teacher.named_parameters()}
    student = {n: p.clone() for n, p in meta.student.named_parameters()}
    gram_before = [p.clone() for p in meta.gram_teacher.parameters()]
    names = set(teacher_before)
    # the teacher is the student less the contrastive head: nothing of it is left out
    assert names == {n for n in student if not n.startswith("contrast_head.")}
    assert {n.split(".")[0] for n in names} == {"backbone", "dino_head", "ibot_head"}
    m = 0.75
    meta.update_teacher(m)
    for name, p in meta.teacher.named_parameters():
        want = m * teacher_before[name] + (1 - m) * student[name]
        torch.testing.assert_close(p, want, rtol=1e-12, atol=1e-12, msg=name)
        assert not torch.equal(p, teacher_before[name]), name
    for name, p in meta.student.named_parameters():  # the student is read, never written
        assert torch.equal(p, student[name]), name
    for p, before in zip(meta.gram_teacher.parameters(), gram_before, strict=True):
        assert torch.equal(p, before)  # the Gram teacher changes only on its refresh schedule
    meta.update_teacher(1.0)  # momentum 1 (the end of the schedule): the teacher stays
    for name, p in meta.teacher.named_parameters():
        torch.testing.assert_close(p, m * teacher_before[name] + (1 - m) * student[name])


# ----------------------------------------------------------------------------- Gram teacher


def _perturb_teacher(meta: MetaArch, step: int) -> None:
    with torch.no_grad():
        for p in meta.teacher.backbone.parameters():
            p.add_(0.01 * (step + 1))


@pytest.mark.parametrize(
    "start, refresh, pretrained, want",
    [
        (3, 4, False, [3, 7, 11]),  # from scratch: a snapshot at the start step, then every 4
        (3, 0, False, [3]),  # refresh 0: the one snapshot only
        (3, 5, True, [5, 10]),  # pretrained: the loaded backbone from step 0, then every 5
    ],
    ids=["scratch-refresh", "scratch-once", "pretrained-refresh"],
)
def test_gram_teacher_refresh_schedule(tmp_path, start, refresh, pretrained, want):
    extra = ["loss.gram_weight=1.0", f"loss.gram_start_step={start}"]
    extra.append(f"loss.gram_refresh_steps={refresh}")
    if pretrained:
        torch.manual_seed(5)
        source = MetaArch(_micro_cfg()).student.backbone
        path = tmp_path / "backbone.pt"
        torch.save(source.state_dict(), path)
        extra.append(f"model.pretrained={path}")
    meta = MetaArch(_micro_cfg(*extra))
    if pretrained:
        for a, b in zip(meta.gram_teacher.parameters(), source.parameters(), strict=True):
            assert torch.equal(a, b)  # the Gram teacher starts as the loaded backbone
    refreshed = []
    for step in range(13):
        _perturb_teacher(meta, step)  # the EMA teacher moves every step
        expected_active = pretrained or step >= start
        if meta.maybe_refresh_gram(step):
            refreshed.append(step)
            assert int(meta.gram_snapshot_step) == step
        assert meta.gram_active(step) == expected_active, step
        copied = all(
            torch.equal(a, b)
            for a, b in zip(
                meta.gram_teacher.parameters(), meta.teacher.backbone.parameters(), strict=True
            )
        )
        assert copied == (bool(refreshed) and refreshed[-1] == step), step
    assert refreshed == want
    assert not any(p.requires_grad for p in meta.gram_teacher.parameters())


def test_gram_teacher_off_never_refreshes():
    meta = MetaArch(_micro_cfg("loss.gram_weight=0"))
    assert meta.gram_teacher is None
    assert not meta.maybe_refresh_gram(10**6) and not meta.gram_active(10**6)


# ----------------------------------------------------------------------------- optimizer step


class _StepSpy:
    """Records, around every optimizer step, the prototype layer and the gradients it sees."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self._handles = []

    def __enter__(self) -> _StepSpy:
        self._handles = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    @staticmethod
    def _last_layer(optimizer) -> list[torch.Tensor]:
        return [p for g in optimizer.param_groups if g["is_last_layer"] for p in g["params"]]

    @staticmethod
    def _others(optimizer) -> list[torch.Tensor]:
        return [p for g in optimizer.param_groups if not g["is_last_layer"] for p in g["params"]]

    def _pre(self, optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.steps.append(
            {
                "grad_norm": float(
                    torch.linalg.vector_norm(torch.stack([x.norm() for x in grads]))
                ),
                "last_layer_grads": [p.grad is not None for p in self._last_layer(optimizer)],
                "last_layer_before": [p.detach().clone() for p in self._last_layer(optimizer)],
                "others_before": [p.detach().clone() for p in self._others(optimizer)],
            }
        )

    def _post(self, optimizer, args, kwargs) -> None:
        self.steps[-1]["last_layer_after"] = [
            p.detach().clone() for p in self._last_layer(optimizer)
        ]
        self.steps[-1]["others_after"] = [p.detach().clone() for p in self._others(optimizer)]


def test_last_layer_is_frozen_for_its_steps_then_moves(shard_dir, tmp_path, micro):
    cfg = load_config(
        None,
        micro(shard_dir, tmp_path, steps=4)
        # no lr warm-up: a step at lr 0 would leave the layer in place frozen or not
        + ["optim.freeze_last_layer_steps=2", "model.ibot_separate_head=true"]
        + ["optim.warmup_steps=0"],
    )
    with _StepSpy() as spy:
        main(cfg)
    assert len(spy.steps) == 4
    for step, record in enumerate(spy.steps):
        frozen = step < 2
        assert len(record["last_layer_before"]) == 2  # the DINO and the iBOT head
        assert record["last_layer_grads"] == [not frozen, not frozen], step
        moved = [
            not torch.equal(a, b)
            for a, b in zip(record["last_layer_before"], record["last_layer_after"], strict=True)
        ]
        assert moved == [not frozen, not frozen], step
        # the rest of the student trains from the first step on
        assert any(
            not torch.equal(a, b)
            for a, b in zip(record["others_before"], record["others_after"], strict=True)
        ), step
    # what the optimizer left is what was checkpointed: frozen steps did not move it either
    final = load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-00000004.pt"))["student"]
    torch.testing.assert_close(
        final["dino_head.last_layer.weight"], spy.steps[-1]["last_layer_after"][0]
    )
    torch.testing.assert_close(
        spy.steps[0]["last_layer_before"][0], spy.steps[1]["last_layer_after"][0], rtol=0, atol=0
    )


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(shard_dir, tmp_path, micro):
    clip = 0.05
    cfg = load_config(
        None,
        micro(shard_dir, tmp_path, steps=3) + [f"optim.clip_grad={clip}"],
    )
    with _StepSpy() as spy:
        main(cfg)
    logged = [r["grad_norm"] for r in _metrics(tmp_path)]  # the norm before clipping
    assert len(logged) == len(spy.steps) == 3
    for before, record in zip(logged, spy.steps, strict=True):
        assert before > 2 * clip  # clipping is active at every step of this run
        # torch's rule: scale by clip / (norm + 1e-6) when that is below 1
        assert record["grad_norm"] == pytest.approx(before * clip / (before + 1e-6), rel=1e-4)
        assert record["grad_norm"] <= clip * (1 + 1e-5)


def test_gradient_clipping_leaves_small_gradients_alone(shard_dir, tmp_path, micro):
    cfg = load_config(None, micro(shard_dir, tmp_path, steps=2) + ["optim.clip_grad=1e6"])
    with _StepSpy() as spy:
        main(cfg)
    logged = [r["grad_norm"] for r in _metrics(tmp_path)]
    for before, record in zip(logged, spy.steps, strict=True):
        assert record["grad_norm"] == pytest.approx(before, rel=1e-5)


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    "extra",
    [
        ["model.drop_path_rate=0.3"],
        ["loss.centering=sinkhorn"],
    ],
    ids=["drop-path", "sinkhorn"],
)
def test_resume_is_exact_with(shard_dir, tmp_path, micro, extra):
    """Stopping at step 3 and resuming gives the uninterrupted run's losses and weights."""
    main(load_config(None, micro(shard_dir, tmp_path / "full", steps=6) + extra))
    split = micro(shard_dir, tmp_path / "split", steps=6) + extra
    assert main(load_config(None, split + ["stop_at_step=3"]))["step"] == 3
    assert main(load_config(None, split))["step"] == 6
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b, strict=True):
        assert ra["batch_digest"] == rb["batch_digest"], ra["step"]
        for key in ("loss/dino", "loss/ibot", "loss/koleo", "loss/contrast", "loss/total"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    full = load_checkpoint(str(tmp_path / "full" / "checkpoints" / "ckpt-00000006.pt"))
    resumed = load_checkpoint(str(tmp_path / "split" / "checkpoints" / "ckpt-00000006.pt"))
    for part in ("student", "teacher"):
        for name, value in full[part].items():
            torch.testing.assert_close(resumed[part][name], value, rtol=1e-5, atol=1e-6)
    for name, value in full["buffers"].items():
        assert torch.equal(torch.as_tensor(resumed["buffers"][name]), torch.as_tensor(value))


# ----------------------------------------------------------------------------- objective


@pytest.mark.parametrize(
    "extra",
    [
        ["loss.centering=centering"],
        [
            "loss.centering=sinkhorn",
            "loss.sinkhorn_iters=5",
            "model.ibot_separate_head=true",
            "loss.contrast_crops=all",
            "model.contrast_hidden=24",
            "model.contrast_dim=12",
        ],  # fmt: skip
    ],
    ids=["centering-shared-head", "sinkhorn-separate-head-all-crops"],
)
def test_objective_is_the_weighted_sum_of_the_five_terms(extra):
    """``MetaArch.forward`` against the same terms rebuilt from the backbones and heads: each
    loss on the right inputs, the total weighted by the config, the centres updated after."""
    weights = {"dino": 0.3, "ibot": 0.7, "koleo": 0.2, "gram": 0.5, "contrast": 0.4}
    cfg = _micro_cfg(
        *[f"loss.{name}_weight={w}" for name, w in weights.items()],
        "loss.gram_start_step=1", "loss.student_temp=0.2", "loss.contrast_temp=0.3",
        "loss.center_momentum=0.8", *extra,
    )  # fmt: skip
    torch.manual_seed(3)
    meta = MetaArch(cfg).double()
    g = torch.Generator().manual_seed(4)

    def jitter(module: torch.nn.Module, scale: float) -> None:
        with torch.no_grad():
            for p in module.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))

    jitter(meta.teacher, 0.05)  # three different networks: student, EMA teacher, Gram teacher
    assert meta.maybe_refresh_gram(1)
    jitter(meta.teacher, 0.05)
    k = cfg.model.head_prototypes
    meta.dino_loss.center.copy_(torch.randn(1, k, generator=g, dtype=torch.float64))
    meta.ibot_loss.center.copy_(torch.randn(1, k, generator=g, dtype=torch.float64))
    centres = (meta.dino_loss.center.clone(), meta.ibot_loss.center.clone())
    n_global, n_local, batch = 2, 2, 3
    masks = torch.zeros(n_global * batch, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[2, 0, 1] = masks[4, 1, 0] = masks[5, 1, 1] = True
    inputs = {
        "global": torch.randn(n_global * batch, 3, 16, 16, generator=g, dtype=torch.float64),
        "local": torch.randn(n_local * batch, 3, 8, 8, generator=g, dtype=torch.float64),
        "masks": masks,
        "labels": torch.tensor([5, 5, 7]),
    }
    temp = 0.05
    sinkhorn = cfg.loss.centering == "sinkhorn"

    def targets(logits: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        flat = logits.reshape(-1, k)
        if sinkhorn:
            return sinkhorn_knopp(flat, temp, cfg.loss.sinkhorn_iters).reshape(logits.shape)
        return torch.softmax((flat - centre) / temp, dim=-1).reshape(logits.shape)

    # ---- the reference, from the backbones and heads
    s, t = meta.student, meta.teacher
    with torch.no_grad():
        tb = t.backbone(inputs["global"])
        t_cls_logits = t.dino_head(tb["cls"]).reshape(n_global, batch, k)
        t_head = t.ibot_head if t.ibot_head is not None else t.dino_head
        t_patch_logits = t_head(tb["patches"][masks.flatten(1)])
        gram_patches = meta.gram_teacher(inputs["global"])["patches"]
        sb = s.backbone(inputs["global"], masks)
        cls = torch.cat([sb["cls"], s.backbone(inputs["local"])["cls"]])
        s_head = s.ibot_head if s.ibot_head is not None else s.dino_head
        image_index = masks.flatten(1).nonzero()[:, 0]
        z = s.contrast_head(cls if cfg.loss.contrast_crops == "all" else sb["cls"])
        want = {
            "dino": DINOClsTokenLoss(k, 0.2)(
                s.dino_head(cls).reshape(n_global + n_local, batch, k),
                targets(t_cls_logits, centres[0]),
            ),
            "ibot": IBOTPatchLoss(k, 0.2)(
                s_head(sb["patches"][masks.flatten(1)]),
                targets(t_patch_logits, centres[1]),
                image_index,
                n_global * batch,
            ),
            "koleo": sum(
                KoLeoLoss()(sb["cls"].reshape(n_global, batch, -1)[c], inputs["labels"])
                for c in range(n_global)
            ),
            "gram": GramLoss()(sb["patches"], gram_patches),
            "contrast": ContrastLoss(0.3)(z, inputs["labels"].repeat(z.shape[0] // batch)),
        }
    want["total"] = sum(weights[name] * want[name] for name in weights)
    assert image_index.tolist() == [0, 0, 2, 4, 5]

    calls = []

    class Wrapped(torch.nn.Module):  # what DDP hands in: the student behind a wrapper
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            calls.append(len(args))
            return self.inner(*args)

    got = meta(inputs, temp, step=1, student=Wrapped(meta.student))
    assert calls == [3]  # one student forward, through the module passed in
    assert z.shape[1] == cfg.model.contrast_dim
    assert s.contrast_head.mlp[0].out_features == cfg.model.contrast_hidden
    assert set(got) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name].detach(), value, rtol=1e-9, atol=1e-12, msg=name)
    assert got["total"].requires_grad
    assert meta.last_stats["masked_patches"] == 5.0
    cls_n = torch.nn.functional.normalize(sb["cls"].float(), dim=-1)
    assert meta.last_stats["cls_std"] == pytest.approx(float(cls_n.std(dim=0).mean()))
    # the collapse diagnostics read this forward's targets, image loss and student CLS
    probs = targets(t_cls_logits, centres[0])
    diagnostics = {
        **target_stats(probs, float(want["dino"])),
        "cls_rank": effective_rank(sb["cls"]),
    }
    assert meta.collapse_stats() == pytest.approx(diagnostics)
    # every crop's label (5, 5, 7 per crop) has another crop: 6 global crops, or all 12
    crops = 12.0 if cfg.loss.contrast_crops == "all" else 6.0
    assert meta.last_stats["contrast_anchors_with_positive"] == crops
    # centres: an EMA of the teacher logits with centering; untouched with Sinkhorn-Knopp
    if sinkhorn:
        assert torch.equal(meta.dino_loss.center, centres[0])
        assert torch.equal(meta.ibot_loss.center, centres[1])
    else:
        for loss, centre, logits in (
            (meta.dino_loss, centres[0], t_cls_logits.reshape(-1, k)),
            (meta.ibot_loss, centres[1], t_patch_logits),
        ):
            want_centre = 0.8 * centre + 0.2 * logits.mean(dim=0, keepdim=True)
            torch.testing.assert_close(loss.center, want_centre, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("off", ["dino", "ibot", "koleo", "gram", "contrast"])
def test_a_zero_weight_removes_its_term_and_heads(off):
    """Each term switched off on its own (and a batch without local crops): the others stay,
    the total is their weighted sum, and a head no term uses is not built."""
    weights = {"dino": 0.3, "ibot": 0.7, "koleo": 0.2, "gram": 0.5, "contrast": 0.4}
    weights[off] = 0.0
    cfg = _micro_cfg(
        *[f"loss.{name}_weight={w}" for name, w in weights.items()],
        "loss.gram_start_step=1",
        "model.layerscale=0.5",
    )
    torch.manual_seed(6)
    meta = MetaArch(cfg)
    # the configured backbone, not the architecture's defaults
    assert meta.student.backbone.embed_dim == 32
    assert torch.all(meta.student.backbone.vit.blocks[0].ls1.gamma == 0.5)
    assert (meta.gram_teacher is None) == (off == "gram")
    assert (meta.student.contrast_head is None) == (off == "contrast")
    assert (meta.student.dino_head is None) == (off == "dino")
    # iBOT shares the DINO head, or has its own when there is no DINO head
    assert (meta.student.ibot_head is not None) == (off == "dino")
    assert meta.student.patch_head() is (meta.student.ibot_head or meta.student.dino_head)
    assert meta.student.ibot_on == (off != "ibot")
    meta.maybe_refresh_gram(1)
    masks = torch.zeros(4, 2, 2, dtype=torch.bool)
    masks[:, 0, 0] = True
    g = torch.Generator().manual_seed(7)
    batch = {
        "global": torch.randn(4, 3, 16, 16, generator=g),
        "masks": masks,
        "labels": torch.tensor([1, 2]),
    }  # no local crops
    losses = meta(batch, 0.05, step=1)
    assert set(losses) == {name for name, w in weights.items() if w > 0} | {"total"}
    want = sum(weights[name] * value for name, value in losses.items() if name != "total")
    torch.testing.assert_close(losses["total"], want)
    if off != "dino":  # only the 2 global crops: 2 pairs, one per teacher crop
        assert meta.student(batch["global"], None, masks)["dino_logits"].shape == (4, 16)
    assert ("masked_patches" in meta.last_stats) == (off != "ibot")
