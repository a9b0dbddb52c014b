"""Each loss against a plain loop-based reference written from its formula, plus edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from train.config import ConfigError, load_config
from train.losses import (
    ContrastLoss,
    DINOClsTokenLoss,
    GramLoss,
    IBOTPatchLoss,
    KoLeoLoss,
    sinkhorn_knopp,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_dino_cls_matches_loop_reference():
    g = _gen(0)
    n_global, n_local, batch, k = 2, 3, 4, 7
    student = torch.randn(n_global + n_local, batch, k, generator=g)
    teacher_logits = torch.randn(n_global, batch, k, generator=g)
    loss_fn = DINOClsTokenLoss(k, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, k, generator=g))
    probs = loss_fn.teacher_probs(teacher_logits, teacher_temp=0.05)
    got = loss_fn(student, probs)
    total, pairs = 0.0, 0
    for t in range(n_global):
        for s in range(n_global + n_local):
            if s == t:
                continue
            for b in range(batch):
                zt = [
                    (teacher_logits[t, b, i].item() - loss_fn.center[0, i].item()) / 0.05
                    for i in range(k)
                ]
                mt = max(zt)
                q = [math.exp(v - mt) for v in zt]
                q = [v / sum(q) for v in q]
                zs = [student[s, b, i].item() / 0.1 for i in range(k)]
                lse = max(zs) + math.log(sum(math.exp(v - max(zs)) for v in zs))
                total += -sum(q[i] * (zs[i] - lse) for i in range(k)) / batch
            pairs += 1
    assert got.item() == pytest.approx(total / pairs, rel=1e-5)


def test_dino_center_update_and_sinkhorn():
    g = _gen(1)
    loss_fn = DINOClsTokenLoss(5, center_momentum=0.9)
    logits = torch.randn(2, 3, 5, generator=g)
    loss_fn.update_center(logits)
    assert torch.allclose(
        loss_fn.center, 0.1 * logits.reshape(-1, 5).mean(0, keepdim=True), atol=1e-6
    )
    q = sinkhorn_knopp(torch.randn(8, 4, generator=g), temp=0.5, iters=50)
    assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-5)  # each sample a distribution
    assert torch.allclose(q.sum(0), torch.full((4,), 2.0), atol=1e-3)  # prototypes equally used


def test_ibot_matches_loop_reference_and_empty():
    g = _gen(2)
    m, k = 7, 6
    student = torch.randn(m, k, generator=g)
    teacher = torch.softmax(torch.randn(m, k, generator=g), dim=-1)
    image_index = torch.tensor([0, 0, 0, 2, 2, 3, 3])
    got = IBOTPatchLoss(k, student_temp=0.1)(student, teacher, image_index, n_images=5)
    per_image: dict[int, list[float]] = {}
    for i in range(m):
        zs = [student[i, j].item() / 0.1 for j in range(k)]
        lse = max(zs) + math.log(sum(math.exp(v - max(zs)) for v in zs))
        ce = -sum(teacher[i, j].item() * (zs[j] - lse) for j in range(k))
        per_image.setdefault(int(image_index[i]), []).append(ce)
    ref = sum(sum(v) / len(v) for v in per_image.values()) / len(per_image)
    assert got.item() == pytest.approx(ref, rel=1e-5)
    empty = IBOTPatchLoss(k)(
        torch.zeros(0, k, requires_grad=True),
        torch.zeros(0, k),
        torch.zeros(0, dtype=torch.long),
        3,
    )
    assert empty.item() == 0.0
    pred, target = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ref_reg = (
        sum(sum((pred[i, j] - target[i, j]).item() ** 2 for j in range(3)) / 3 for i in range(4))
        / 4
    )
    assert IBOTPatchLoss(k).regression(pred, target).item() == pytest.approx(ref_reg, rel=1e-5)


def test_koleo_matches_loop_reference_with_labels():
    g = _gen(3)
    x = torch.randn(6, 4, generator=g)
    labels = torch.tensor([1, 1, 2, 3, 3, 4])
    got = KoLeoLoss(eps=1e-8)(x, labels)
    xn = [v / v.norm() for v in x]
    terms = []
    for i in range(6):
        dists = [
            (xn[i] - xn[j]).norm().item() for j in range(6) if j != i and labels[j] != labels[i]
        ]
        if dists:
            terms.append(-math.log(min(dists) + 1e-8))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_koleo_safe_at_tiny_batch(batch):
    x = torch.randn(batch, 8, requires_grad=True)
    loss = KoLeoLoss()(x, torch.zeros(batch, dtype=torch.long))  # one material only
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()
    same = torch.ones(2, 8, requires_grad=True)  # identical features, different materials
    loss = KoLeoLoss()(same, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()


def test_gram_matches_loop_reference_and_zero_when_identical():
    g = _gen(4)
    s, t = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    got = GramLoss()(s, t)
    total = 0.0
    for b in range(2):
        sn = [v / v.norm() for v in s[b]]
        tn = [v / v.norm() for v in t[b]]
        err = sum(
            (torch.dot(sn[i], sn[j]) - torch.dot(tn[i], tn[j])).item() ** 2
            for i in range(5)
            for j in range(5)
        )
        total += err / 25
    assert got.item() == pytest.approx(total / 2, rel=1e-5)
    assert GramLoss()(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)


def _contrast_reference(z: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    zn = [v / v.norm() for v in z]
    n = len(zn)
    terms = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        num = sum(math.exp(torch.dot(zn[i], zn[j]).item() / tau) for j in positives)
        den = sum(math.exp(torch.dot(zn[i], zn[k]).item() / tau) for k in range(n) if k != i)
        terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def test_contrast_matches_loop_reference_multi_positive():
    g = _gen(5)
    z = torch.randn(9, 4, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3])  # label 2 has no positive: skipped
    loss_fn = ContrastLoss(temperature=0.2)
    got = loss_fn(z, labels)
    assert got.item() == pytest.approx(_contrast_reference(z, labels, 0.2), rel=1e-5)
    assert loss_fn.last_stats["anchors_with_positive"] == 8


def test_contrast_one_positive_is_infonce():
    g = _gen(6)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    z = torch.cat([a, b])
    labels = torch.arange(4).repeat(2)
    got = ContrastLoss(temperature=0.1)(z, labels)
    zn = torch.nn.functional.normalize(z, dim=-1)
    sims = zn @ zn.t() / 0.1
    sims.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(4, 8), torch.arange(4)])
    infonce = torch.nn.functional.cross_entropy(sims, target)
    assert got.item() == pytest.approx(infonce.item(), rel=1e-5)


def test_contrast_without_positives_is_zero_not_nan():
    z = torch.randn(4, 3, requires_grad=True)
    loss = ContrastLoss()(z, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()
    z2 = torch.randn(5, 3, requires_grad=True)
    loss = ContrastLoss()(z2, torch.tensor([0, 0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z2.grad).all()


def test_sinkhorn_accepts_zero_rows():
    # A rank (or a step) whose images have no masked patch gives iBOT Sinkhorn no rows.
    q = sinkhorn_knopp(torch.zeros(0, 5), temp=0.1)
    assert q.shape == (0, 5)


def test_ibot_centre_unchanged_without_masked_patch():
    loss_fn = IBOTPatchLoss(4, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5]]))
    before = loss_fn.center.clone()
    loss_fn.update_center(torch.zeros(0, 4))
    assert torch.equal(loss_fn.center, before)  # an empty mean is no evidence of a 0 centre
    logits = torch.randn(3, 4, generator=_gen(7))
    loss_fn.update_center(logits)
    assert torch.allclose(loss_fn.center, 0.9 * before + 0.1 * logits.mean(0, keepdim=True))


def test_losses_keep_fp64():
    # The world-size tests compare in fp64: no loss may round its inputs to fp32 on the way.
    g = _gen(8)
    dino = DINOClsTokenLoss(4)
    probs = dino.teacher_probs(torch.randn(2, 3, 4, generator=g, dtype=torch.float64), 0.1)
    values = [
        dino(torch.randn(3, 3, 4, generator=g, dtype=torch.float64), probs),
        sinkhorn_knopp(torch.randn(3, 4, generator=g, dtype=torch.float64), 0.1),
        IBOTPatchLoss(4)(probs[0], probs[1], torch.tensor([0, 0, 1]), 2),
        IBOTPatchLoss(4).regression(probs[0], probs[1]),
        KoLeoLoss()(probs[0]),
        GramLoss()(probs, probs.flip(0)),
        ContrastLoss()(probs[0], torch.tensor([0, 0, 1])),
    ]
    assert [v.dtype for v in values] == [torch.float64] * len(values)


@pytest.mark.parametrize("pretrained", ["", "weights/backbone.pt"], ids=["scratch", "pretrained"])
def test_gram_from_a_random_network_is_refused(pretrained):
    overrides = ["loss.gram_weight=0.5", "loss.gram_start_step=0", f"model.pretrained={pretrained}"]
    if pretrained:  # the loaded backbone is the Gram teacher from step 0: nothing to refuse
        assert load_config("tiny-cpu", overrides).loss.gram_start_step == 0
        return
    with pytest.raises(ConfigError, match=r"loss.gram_start_step = 0 .*Set loss.gram_start_step"):
        load_config("tiny-cpu", overrides)
    assert load_config("tiny-cpu", overrides[:1] + ["loss.gram_start_step=1"])  # 1 step is allowed
    assert load_config("tiny-cpu", ["loss.gram_weight=0", "loss.gram_start_step=0"])  # Gram off
