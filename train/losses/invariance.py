"""World-size invariance of every loss: W ranks holding a split batch vs one process holding it.

    .venv/bin/torchrun --nproc-per-node 8 bench/train_gpu.py --check               # NCCL, GPUs
    .venv/bin/torchrun --nproc-per-node 2 bench/train_gpu.py --check --device cpu  # gloo (CI)

Each case is a fixed global batch (fp64, fixed seed) of ``3 W`` samples, split over ranks by
sample (``torch.tensor_split``, rank order). ``evaluate`` runs the loss on a set of samples;
``reference`` is called *before* torch.distributed is initialised (one process, the whole
batch), ``check`` after it, on this rank's samples. Following the rule in
``train.losses.distributed``, a case passes when

* value: the mean over ranks of the rank's loss equals the one-process loss;
* gradient: the gradient of each input row on the rank that holds it, divided by ``W`` (what
  DDP's and FSDP2's average applies), equals the one-process gradient of that row;
* extras: the teacher targets of the rank's rows and the centres after an update are equal;

each to ``tol`` (max abs error, relative above magnitude 1). A per-rank case (KoLeo) is held to
its documented objective instead, the one-process mean of the loss of each rank's share, and
its record also gives how far that is from the whole-batch loss (``per_rank_gap``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from train.losses.contrast import ContrastLoss
from train.losses.dino_clstoken import DINOClsTokenLoss, sinkhorn_knopp
from train.losses.distributed import dist_on
from train.losses.gram import GramLoss
from train.losses.ibot_patch import IBOTPatchLoss
from train.losses.koleo import KoLeoLoss

PER_RANK = 3  # samples per rank
K, D = 16, 8  # prototypes, feature width

Split = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (global tensor, samples) -> rows
Run = Callable[[dict, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass
class Case:
    name: str
    inputs: dict[str, torch.Tensor]  # the global batch
    split: dict[str, Split]  # how each input is cut to a set of samples
    run: Run  # (this share of the inputs, its samples) -> (loss, {extra: tensor})
    grad: tuple[str, ...]  # inputs whose row gradients are checked
    extra_layout: dict[str, str | None] = field(default_factory=dict)  # per-row extras: input
    per_rank: bool = False
    expect: dict[str, torch.Tensor] = field(default_factory=dict)  # extras known in advance


def _dim(d: int) -> Split:
    return lambda t, s: t.index_select(d, s.to(t.device))


def _crop_major(n_crops: int, n: int) -> Split:
    """Row ``c * n + b`` is crop ``c`` of sample ``b``; a share keeps that layout."""

    def take(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        rows = (torch.arange(n_crops)[:, None] * n + s[None, :]).flatten()
        return t.index_select(0, rows.to(t.device))

    return take


def _by_image(image: torch.Tensor) -> Split:
    """Masked-patch rows, each belonging to the image (sample) ``image[row]``."""

    def take(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        rows = torch.isin(image.cpu(), s).nonzero()[:, 0]
        return t.index_select(0, rows.to(t.device))

    return take


def _patch_counts(n: int, world: int, empty_last_rank: bool) -> torch.Tensor:
    """Masked patches per image: even ranks have 3 masked images, odd ranks 1, so per-rank
    image means differ from the global one; optionally the last rank has none at all."""
    counts = []
    for i in range(n):
        rank, j = divmod(i, PER_RANK)
        c = j + 1 if rank % 2 == 0 else (4 if j == PER_RANK - 1 else 0)
        counts.append(0 if empty_last_rank and rank == world - 1 else c)
    return torch.tensor(counts)


def _local_index(image: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    return (image[:, None] == samples.to(image.device)[None, :]).long().argmax(dim=1)


def cases(world: int, device: torch.device) -> list[Case]:
    """Every loss and mode, on a batch of ``3 * world`` samples."""
    g = torch.Generator().manual_seed(0)
    n = PER_RANK * world
    dt = torch.float64

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=dt) * scale).to(device)

    out: list[Case] = []
    # ---- L_image: 2 global + 2 local crops; centering and Sinkhorn-Knopp targets.
    centre = rand(1, K)
    # A ramp over samples gives every rank a different maximum logit.
    ramp = torch.linspace(0.0, 3.0, n, dtype=dt, device=device)[None, :, None]
    for mode in ("centering", "sinkhorn"):

        def run_dino(x: dict, s: torch.Tensor, mode: str = mode) -> tuple[torch.Tensor, dict]:
            loss = DINOClsTokenLoss(K, 0.1, 0.9).to(device).double()
            loss.center.copy_(centre)
            probs = loss.teacher_probs(x["teacher"], 0.07, mode, 3)
            value = loss(x["student"], probs)
            loss.update_center(x["teacher"])
            return value, {"targets": probs, "center": loss.center}

        out.append(
            Case(
                f"dino_{mode}",
                {"student": rand(4, n, K, scale=2.0), "teacher": rand(2, n, K) + ramp},
                {"student": _dim(1), "teacher": _dim(1)},
                run_dino,
                ("student",),
                {"targets": "teacher", "center": None},
            )
        )
    # ---- L_iBOT: masked patches of unequal counts per rank; one rank without any.
    for name, empty, mode in (
        ("ibot_centering", False, "centering"),
        ("ibot_centering_empty_rank", True, "centering"),
        ("ibot_sinkhorn_empty_rank", True, "sinkhorn"),
    ):
        counts = _patch_counts(n, world, empty)
        image = torch.repeat_interleave(torch.arange(n), counts).to(device)
        m = int(counts.sum())

        def run_ibot(x: dict, s: torch.Tensor, mode: str = mode) -> tuple[torch.Tensor, dict]:
            loss = IBOTPatchLoss(K, 0.1, 0.9).to(device).double()
            loss.center.copy_(centre)
            if mode == "sinkhorn":
                probs = sinkhorn_knopp(x["teacher"], 0.07, 3)
            else:
                probs = torch.softmax((x["teacher"] - loss.center) / 0.07, dim=-1)
            value = loss(x["student"], probs, _local_index(x["image"], s), len(s))
            loss.update_center(x["teacher"])
            return value, {"targets": probs, "center": loss.center}

        split = _by_image(image)
        out.append(
            Case(
                name,
                {"student": rand(m, K, scale=2.0), "teacher": rand(m, K), "image": image},
                {"student": split, "teacher": split, "image": split},
                run_ibot,
                ("student",),
                {"targets": "teacher", "center": None},
            )
        )
    counts = _patch_counts(n, world, False)
    image = torch.repeat_interleave(torch.arange(n), counts).to(device)
    m = int(counts.sum())

    def run_regression(x: dict, s: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return IBOTPatchLoss(K).regression(x["predicted"], x["target"]), {}

    split = _by_image(image)
    out.append(
        Case(
            "ibot_regression",
            {"predicted": rand(m, D), "target": rand(m, D)},
            {"predicted": split, "target": split},
            run_regression,
            ("predicted",),
        )
    )

    def run_no_mask(x: dict, s: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = IBOTPatchLoss(K, 0.1, 0.9).to(device).double()
        loss.center.copy_(centre)
        probs = torch.softmax((x["teacher"] - loss.center) / 0.07, dim=-1)
        no_image = torch.zeros(0, dtype=torch.long, device=device)
        value = loss(x["student"], probs, no_image, len(s))
        loss.update_center(x["teacher"])
        return value, {"center": loss.center}

    none = _by_image(torch.zeros(0, dtype=torch.long))
    out.append(
        Case(
            "ibot_no_masked_patch",
            {"student": rand(0, K), "teacher": rand(0, K)},
            {"student": none, "teacher": none},
            run_no_mask,
            ("student",),
            {"center": None},
            expect={"center": centre},  # no masked patch anywhere: the centre stays
        )
    )
    # ---- L_contrast: 2 crops per sample with positives across ranks; then 1 crop per sample
    # where only rank 0 has anchors with a positive (the other ranks' crops are negatives only).
    labels = torch.arange(n) % 4
    sparse = torch.tensor([[0, 0, 1][i] if i < PER_RANK else 100 + i for i in range(n)])
    for name, crops, lab in (("contrast", 2, labels), ("contrast_sparse", 1, sparse)):
        split = _crop_major(crops, n)

        def run_contrast(x: dict, s: torch.Tensor) -> tuple[torch.Tensor, dict]:
            return ContrastLoss(0.2)(x["z"], x["labels"]), {}

        out.append(
            Case(
                name,
                {"z": rand(crops * n, D), "labels": lab.repeat(crops).to(device)},
                {"z": split, "labels": split},
                run_contrast,
                ("z",),
            )
        )
    # ---- L_Gram: 2 global crops per sample, 4 patches each.
    split = _crop_major(2, n)

    def run_gram(x: dict, s: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return GramLoss()(x["student"], x["teacher"]), {}

    out.append(
        Case(
            "gram",
            {"student": rand(2 * n, 4, D), "teacher": rand(2 * n, 4, D)},
            {"student": split, "teacher": split},
            run_gram,
            ("student",),
        )
    )

    # ---- L_KoLeo: per rank by design; two samples of one material on each rank.
    def run_koleo(x: dict, s: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return KoLeoLoss()(x["features"], x["labels"]), {}

    koleo_labels = torch.tensor([i - i % PER_RANK + min(i % PER_RANK, 1) for i in range(n)])
    out.append(
        Case(
            "koleo_per_rank",
            {"features": rand(n, D), "labels": koleo_labels.to(device)},
            {"features": _dim(0), "labels": _dim(0)},
            run_koleo,
            ("features",),
            per_rank=True,
        )
    )
    return out


def shares(world: int) -> list[torch.Tensor]:
    """The samples each rank holds."""
    return list(torch.tensor_split(torch.arange(PER_RANK * world), world))


def evaluate(case: Case, chunks: list[torch.Tensor]) -> dict:
    """Loss, input gradients and extras of ``case`` on the samples in ``chunks`` (the mean of the
    loss over the chunks: one chunk on a rank or for a global reference, every rank's share for
    the reference of a per-rank case)."""
    leaves = {
        k: v.detach().clone().requires_grad_(k in case.grad and v.is_floating_point())
        for k, v in case.inputs.items()
    }
    values, extras = [], {}
    for samples in chunks:
        local = {k: case.split[k](v, samples) for k, v in leaves.items()}
        value, extras = case.run(local, samples)
        values.append(value)
    value = torch.stack(values).mean()
    if value.requires_grad:
        value.backward()
    grads = {
        k: leaves[k].grad if leaves[k].grad is not None else torch.zeros_like(leaves[k])
        for k in case.grad
    }
    return {"value": value.detach(), "grads": grads, "extras": extras}


def reference(world: int, device: torch.device) -> dict[str, dict]:
    """One process, the whole batch (call before torch.distributed is initialised)."""
    if dist_on():
        raise RuntimeError("compute the references before init_process_group")
    out = {}
    for case in cases(world, device):
        everything = [torch.arange(PER_RANK * world)]
        out[case.name] = evaluate(case, shares(world) if case.per_rank else everything)
        if case.per_rank:
            out[case.name]["whole_batch_value"] = evaluate(case, everything)["value"]
    return out


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    if want.numel() == 0:
        return 0.0
    scale = max(1.0, float(want.abs().max()))
    return float((got.to(want.dtype) - want).abs().max()) / scale


def check(refs: dict[str, dict], device: torch.device, tol: float = 1e-6, only=()) -> list[dict]:
    """This rank's share against the references; collective: every rank gets the records."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = shares(world)[rank]
    records = []
    for case in cases(world, device):
        if only and case.name not in only:
            continue
        ref = refs[case.name]
        got = evaluate(case, [mine])
        value = got["value"].clone().reshape(1)
        dist.all_reduce(value)
        errors = torch.zeros(3, dtype=torch.float64, device=device)
        errors[0] = _err(value / world, ref["value"].reshape(1))
        grad_errs = [
            _err(case.split[k](got["grads"][k], mine) / world, case.split[k](ref["grads"][k], mine))
            for k in case.grad
        ]
        errors[1] = max(grad_errs, default=0.0)
        extra_errs = [0.0]
        for name, tensor in got["extras"].items():
            layout = case.extra_layout.get(name)
            want = ref["extras"][name]
            want = case.split[layout](want, mine) if layout else want
            extra_errs.append(_err(tensor, want))
            if name in case.expect:
                extra_errs.append(_err(tensor, case.expect[name]))
        errors[2] = max(extra_errs)
        dist.all_reduce(errors, op=dist.ReduceOp.MAX)
        value_err, grad_err, extra_err = errors.tolist()
        record = {
            "check": case.name,
            "value_err": value_err,
            "grad_err": grad_err,
            "extra_err": extra_err,
            "tol": tol,
            "ok": max(value_err, grad_err, extra_err) <= tol,
        }
        if case.per_rank:
            gap = float((ref["value"] - ref["whole_batch_value"]).abs())
            record["per_rank_gap"] = gap
            record["note"] = "per rank by design: equals the mean of each rank's own loss"
            record["ok"] = record["ok"] and gap > 100 * tol
        records.append(record)
    return records
