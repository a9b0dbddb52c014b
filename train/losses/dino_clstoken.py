"""``L_image``: DINO cross-entropy between teacher and student CLS prototype distributions.

For teacher global crops t and student crops s (all crops except the identical global one)::

    L = 1/|pairs| * sum_{(t, s), s != t} 1/B sum_b  - sum_k q_t[b, k] * log p_s[b, k]
    p_s = softmax(student_logits_s / tau_s),   q_t = softmax((teacher_logits_t - c) / tau_t)

with the centre ``c`` an EMA of the teacher logits' batch mean (momentum 0.9), or ``q`` from
Sinkhorn-Knopp (3 iterations). Shapes: student ``[S, B, K]`` (S = globals + locals, globals
first), teacher probabilities ``[G, B, K]``.

Per rank and global (``train.losses.distributed``): everything is global. ``B`` is the global
batch: a rank returns its samples' sum divided by ``B_global / W``, so the rank mean is the
global loss. The centre's batch mean is all-reduced (sum and count), so every rank holds the
same centre; Sinkhorn-Knopp normalises over the global batch (its maximum, total, prototype
sums and sample count are all-reduced), so a sample's target does not depend on how the batch
is split over ranks, and a rank may hold no rows at all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from train.losses.distributed import all_reduce, dist_on, share_divisor, upcast


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iters: int = 3) -> torch.Tensor:
    """Doubly-normalised soft assignment ``[N, K]`` (rows sum to 1) over the global batch.

    One constant (the maximum over every rank's logits) is subtracted before ``exp``: a
    per-rank constant would scale each rank's columns differently before the prototype sums
    are all-reduced. ``N`` may be 0 on a rank (no masked patch); ``[0, K]`` comes back.
    """
    logits = upcast(logits)
    if logits.shape[0] > 0:
        top = logits.max().reshape(1)
    else:
        top = torch.full((1,), float("-inf"), dtype=logits.dtype, device=logits.device)
    all_reduce(top, op=dist.ReduceOp.MAX)
    n = torch.tensor(logits.shape[0], device=logits.device, dtype=logits.dtype)
    all_reduce(n)
    q = torch.exp((logits - top) / temp).t()  # [K, N]
    k = q.shape[0]
    total = all_reduce(q.sum())
    q /= total
    for _ in range(iters):
        rows = all_reduce(q.sum(dim=1, keepdim=True))
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    q *= n
    return q.t()


class DINOClsTokenLoss(nn.Module):
    def __init__(
        self, prototypes: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, prototypes))

    @torch.no_grad()
    def teacher_probs(
        self,
        teacher_logits: torch.Tensor,
        teacher_temp: float,
        mode: str = "centering",
        iters: int = 3,
    ) -> torch.Tensor:
        """``[..., K]`` teacher logits -> probabilities (centering uses the current centre)."""
        flat = upcast(teacher_logits).reshape(-1, teacher_logits.shape[-1])
        if mode == "sinkhorn":
            probs = sinkhorn_knopp(flat, teacher_temp, iters)
        else:
            probs = F.softmax((flat - self.center) / teacher_temp, dim=-1)
        return probs.reshape(teacher_logits.shape)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher logits' mean over the global batch (same centre on every rank)."""
        flat = upcast(teacher_logits).reshape(-1, teacher_logits.shape[-1])
        total = all_reduce(flat.sum(dim=0, keepdim=True))
        count = all_reduce(torch.tensor(float(flat.shape[0]), device=flat.device))
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """student ``[S, B, K]`` logits, teacher ``[G, B, K]`` probabilities -> scalar loss
        (on ``W`` ranks: ``W`` x this rank's share of the global loss)."""
        log_p = F.log_softmax(upcast(student_logits) / self.student_temp, dim=-1)
        n_global = teacher_probs.shape[0]
        batch = student_logits.shape[1]
        if dist_on():  # B_global / W: this rank's sum over samples -> W x its share
            batch = share_divisor(
                torch.tensor(float(batch), device=log_p.device, dtype=log_p.dtype)
            )
        # [G, S]: cross-entropy of every (teacher crop, student crop) pair, batch-averaged.
        ce = -torch.einsum("tbk,sbk->ts", upcast(teacher_probs), log_p) / batch
        keep = torch.ones_like(ce, dtype=torch.bool)
        idx = torch.arange(min(n_global, student_logits.shape[0]), device=ce.device)
        keep[idx, idx] = False
        return ce[keep].sum() / keep.sum().clamp(min=1)
