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


@pytest.mark.parametrize(
    "n_global, n_local, batch",
    [(2, 3, 4), (2, 0, 1), (1, 1, 3)],
    ids=["2g3l", "batch-smaller-than-globals", "one-pair"],
)
def test_dino_cls_matches_loop_reference(n_global, n_local, batch):
    g = _gen(0)
    k = 7
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


def _centre_reference(centre: list[float], rows: list[list[float]], momentum: float) -> list:
    """``m * c + (1 - m) * mean(rows)``, one prototype at a time."""
    k = len(centre)
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(k)]
    return [momentum * centre[i] + (1 - momentum) * mean[i] for i in range(k)]


def test_dino_center_update_from_a_non_zero_centre():
    g = _gen(1)
    loss_fn = DINOClsTokenLoss(5, center_momentum=0.8)
    centre = [1.5, -2.0, 0.25, 3.0, -0.5]
    loss_fn.center.copy_(torch.tensor([centre]))
    expected = centre
    for _ in range(2):  # two steps: the momentum compounds on the previous centre
        logits = torch.randn(2, 3, 5, generator=g)  # [G, B, K]: the mean is over G * B rows
        loss_fn.update_center(logits)
        expected = _centre_reference(expected, logits.reshape(-1, 5).tolist(), 0.8)
        assert loss_fn.center.shape == (1, 5)
        assert loss_fn.center[0].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # the centred softmax reads the centre just updated
    logits = torch.randn(1, 2, 5, generator=g)
    probs = loss_fn.teacher_probs(logits, teacher_temp=0.5)
    for b in range(2):
        z = [(logits[0, b, i].item() - expected[i]) / 0.5 for i in range(5)]
        e = [math.exp(v - max(z)) for v in z]
        assert probs[0, b].tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-5)


def _sinkhorn_reference(logits: list[list[float]], temp: float, iters: int) -> list[list[float]]:
    """Sinkhorn-Knopp as matrix scaling: ``Q = diag(u) P diag(v)`` with ``P = exp(S / temp)``
    ([K prototypes, N samples]); each iteration sets ``u`` so that every prototype's row sums
    to 1/K, then ``v`` so that every sample's column sums to 1/N; the result is ``N Q^T``
    (each sample a distribution). ``P`` is scaled by ``exp(-max S / temp)`` against overflow,
    which the scaling absorbs."""
    n, k = len(logits), len(logits[0])
    top = max(max(row) for row in logits)
    p = [[math.exp((logits[b][j] - top) / temp) for b in range(n)] for j in range(k)]
    v = [1.0] * n
    u = [1.0] * k
    for _ in range(iters):
        u = [(1.0 / k) / sum(p[j][b] * v[b] for b in range(n)) for j in range(k)]
        v = [(1.0 / n) / sum(u[j] * p[j][b] for j in range(k)) for b in range(n)]
    return [[n * u[j] * p[j][b] * v[b] for j in range(k)] for b in range(n)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sinkhorn_three_iterations_match_the_scaling_reference(dtype):
    g = _gen(11)
    # an uneven batch: one prototype favoured by most samples, logits far from 0 (max subtracted)
    logits = (torch.randn(6, 4, generator=g, dtype=torch.float64) * 2.0 + 30.0).to(dtype)
    logits[:, 1] += 1.5
    temp = 0.5
    want = _sinkhorn_reference(logits.double().tolist(), temp, 3)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    got = sinkhorn_knopp(logits, temp)  # the default is the 3 iterations training uses
    assert got.dtype == dtype and got.shape == (6, 4)
    for b in range(6):
        assert got[b].tolist() == pytest.approx(want[b], rel=tol, abs=tol)
    assert torch.allclose(got.sum(1), torch.ones(6, dtype=dtype), atol=tol)  # rows: samples
    # the iteration count matters at 3 (else the test could not tell 3 from many)
    converged = _sinkhorn_reference(logits.double().tolist(), temp, 200)
    assert max(abs(want[b][j] - converged[b][j]) for b in range(6) for j in range(4)) > 1e-3
    for j in range(4):  # converged: every prototype takes N / K of the batch
        assert sum(converged[b][j] for b in range(6)) == pytest.approx(6 / 4, rel=1e-6)
    for iters in (1, 7):
        again = sinkhorn_knopp(logits, temp, iters)
        ref = _sinkhorn_reference(logits.double().tolist(), temp, iters)
        for b in range(6):
            assert again[b].tolist() == pytest.approx(ref[b], rel=tol, abs=tol)


def test_sinkhorn_is_what_training_uses():
    cfg = load_config("tiny-cpu", ["loss.centering=sinkhorn"])
    assert cfg.loss.sinkhorn_iters == 3
    g = _gen(12)
    logits = torch.randn(2, 3, 5, generator=g)  # [G, B, K]: normalised over all G * B rows
    want = _sinkhorn_reference(logits.reshape(-1, 5).double().tolist(), 0.07, 3)
    probs = DINOClsTokenLoss(5).teacher_probs(logits, 0.07, mode="sinkhorn", iters=3)
    assert probs.shape == (2, 3, 5)
    for row, ref in zip(probs.reshape(-1, 5).tolist(), want, strict=True):
        assert row == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_sinkhorn_balances_prototypes_when_run_to_convergence():
    q = sinkhorn_knopp(torch.randn(8, 4, generator=_gen(1)), temp=0.5, iters=50)
    assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-5)  # each sample a distribution
    assert torch.allclose(q.sum(0), torch.full((4,), 2.0), atol=1e-3)  # prototypes equally used


def test_ibot_matches_loop_reference_and_empty():
    g = _gen(2)
    m, k = 7, 6
    student = torch.randn(m, k, generator=g)
    teacher = torch.softmax(torch.randn(m, k, generator=g), dim=-1)
    image_index = torch.tensor([0, 0, 0, 2, 2, 3, 4])  # images of 3, 2, 1 and 1 patches
    got = IBOTPatchLoss(k, student_temp=0.1)(student, teacher, image_index, n_images=6)
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
    # 8 anchors with a positive; positives per anchor 2,2,2,1,1,0,2,2,2; one process: no remote
    assert loss_fn.last_stats == {
        "anchors_with_positive": 8.0,
        "positives": 14.0,
        "positives_other_ranks": 0.0,
    }


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


def test_ibot_update_center_momentum_against_hand_computation():
    g = _gen(13)
    loss_fn = IBOTPatchLoss(3, center_momentum=0.6)
    centre = [-1.0, 0.5, 2.0]
    loss_fn.center.copy_(torch.tensor([centre]))
    expected = centre
    for m in (5, 1, 0, 2):  # masked patches per step; a step without any leaves the centre
        logits = torch.randn(m, 3, generator=g)
        loss_fn.update_center(logits)
        if m:
            expected = _centre_reference(expected, logits.tolist(), 0.6)
        assert loss_fn.center[0].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # and the centre is the one the centred iBOT targets of the trainer subtract
    meta_cfg = load_config(
        None,
        [
            "model.arch=vit_tiny_patch16_224", "model.patch_size=8", "model.embed_dim=16",
            "model.depth=1", "model.num_heads=2", "model.head_prototypes=3",
            "model.head_hidden=8", "model.head_bottleneck=4", "crops.global_size=16",
            "crops.local_size=8", "loss.center_momentum=0.6",
        ],
    )  # fmt: skip
    from train.meta_arch import MetaArch

    meta = MetaArch(meta_cfg)
    assert meta.ibot_loss.center_momentum == 0.6 and meta.dino_loss.center_momentum == 0.6
    meta.ibot_loss.center.copy_(loss_fn.center)
    patch_logits = torch.randn(4, 3, generator=g)
    probs = meta._probs(patch_logits, 0.2, meta.ibot_loss)
    for row, logit in zip(probs.tolist(), patch_logits.tolist(), strict=True):
        z = [(logit[i] - expected[i]) / 0.2 for i in range(3)]
        e = [math.exp(v - max(z)) for v in z]
        assert row == pytest.approx([v / sum(e) for v in e], rel=1e-5)


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


@pytest.fixture
def one_rank_group():
    """A 1-rank gloo group in this process: the losses take their distributed branches."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _every_loss(g: torch.Generator) -> dict:
    """Each loss (and centre/target) on fixed fp64 inputs, with the input gradients."""
    dt = torch.float64
    student = torch.randn(4, 3, 6, generator=g, dtype=dt).requires_grad_(True)
    teacher = torch.randn(2, 3, 6, generator=g, dtype=dt)
    patches = torch.randn(5, 6, generator=g, dtype=dt).requires_grad_(True)
    patch_teacher = torch.randn(5, 6, generator=g, dtype=dt)
    image_index = torch.tensor([0, 0, 1, 3, 3])
    gram_s = torch.randn(3, 4, 5, generator=g, dtype=dt).requires_grad_(True)
    gram_t = torch.randn(3, 4, 5, generator=g, dtype=dt)
    z = torch.randn(6, 5, generator=g, dtype=dt).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 3])
    dino = DINOClsTokenLoss(6, 0.1, 0.7).double()
    dino.center.copy_(torch.randn(1, 6, generator=g, dtype=dt))
    ibot = IBOTPatchLoss(6, 0.1, 0.7).double()
    ibot.center.copy_(torch.randn(1, 6, generator=g, dtype=dt))
    out = {
        "dino": dino(student, dino.teacher_probs(teacher, 0.05)),
        "dino_sinkhorn": dino(student, dino.teacher_probs(teacher, 0.05, "sinkhorn")),
        "ibot": ibot(patches, sinkhorn_knopp(patch_teacher, 0.05), image_index, 4),
        "ibot_regression": ibot.regression(patches, patch_teacher),
        "gram": GramLoss()(gram_s, gram_t),
        "contrast": ContrastLoss(0.2)(z, labels),
        "contrast_no_positive": ContrastLoss(0.2)(z, torch.arange(6)),
        "ibot_no_masked_patch": ibot(
            patches[:0], patch_teacher[:0], torch.zeros(0, dtype=torch.long), 4
        ),
        "koleo": KoLeoLoss()(z, labels),
    }
    sum(out.values()).backward()
    dino.update_center(teacher)
    ibot.update_center(patch_teacher)
    out.update(
        {
            "grad_student": student.grad,
            "grad_patches": patches.grad,
            "grad_gram": gram_s.grad,
            "grad_z": z.grad,
            "dino_center": dino.center,
            "ibot_center": ibot.center,
            "targets": sinkhorn_knopp(patch_teacher, 0.05),
        }
    )
    return {k: v.detach() for k, v in out.items()}


def test_distributed_branches_on_one_rank_equal_the_plain_losses(one_rank_group):
    from train.losses.distributed import dist_on

    assert dist_on()
    on_one_rank = _every_loss(_gen(21))
    import torch.distributed as dist

    dist.destroy_process_group()  # the same computation without torch.distributed
    try:
        assert not dist_on()
        plain = _every_loss(_gen(21))
    finally:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert set(on_one_rank) == set(plain)
    for name, value in plain.items():
        torch.testing.assert_close(on_one_rank[name], value, rtol=1e-12, atol=1e-12, msg=name)


def test_defaults_are_the_documented_ones():
    # DINO/iBOT: student temperature 0.1, centre momentum 0.9; L_contrast: temperature 0.1
    for loss in (DINOClsTokenLoss(4), IBOTPatchLoss(4)):
        assert (loss.student_temp, loss.center_momentum) == (0.1, 0.9)
        assert torch.equal(loss.center, torch.zeros(1, 4))
    assert ContrastLoss().temperature == 0.1
    assert KoLeoLoss().eps == 1e-8


def test_ibot_regression_with_no_or_one_masked_patch():
    pred = torch.zeros(0, 3, requires_grad=True)
    empty = IBOTPatchLoss(4).regression(pred, torch.zeros(0, 3))
    empty.backward()
    assert empty.item() == 0.0 and pred.grad is not None and torch.isfinite(pred.grad).all()
    one = IBOTPatchLoss(4).regression(
        torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    )
    assert one.item() == pytest.approx((1 + 4 + 9) / 3)


def test_half_precision_inputs_are_computed_in_fp32():
    from train.losses.distributed import upcast

    g = _gen(9)
    for dtype in (torch.bfloat16, torch.float16):
        assert upcast(torch.ones(2, dtype=dtype)).dtype == torch.float32
    x = torch.randn(3, 2, 5, generator=g)
    t = torch.softmax(torch.randn(2, 2, 5, generator=g), dim=-1)
    low = DINOClsTokenLoss(5)(x.bfloat16(), t.bfloat16())
    assert low.dtype == torch.float32
    # the bf16 inputs are widened before the softmax: the same as fp32 on the rounded values
    ref = DINOClsTokenLoss(5)(x.bfloat16().float(), t.bfloat16().float())
    assert low.item() == ref.item()
