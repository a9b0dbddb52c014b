"""``L_image``: DINO cross-entropy between teacher and student CLS prototype distributions.

For teacher global crops t and student crops s (all crops except the identical global one)::

    L = 1/|pairs| * sum_{(t, s), s != t} 1/B sum_b  - sum_k q_t[b, k] * log p_s[b, k]
    p_s = softmax(student_logits_s / tau_s),   q_t = softmax((teacher_logits_t - c) / tau_t)

with the centre ``c`` an EMA of the teacher logits' batch mean (momentum 0.9), or ``q`` from
Sinkhorn-Knopp (3 iterations, batch statistics gathered over all ranks). Shapes:
student ``[S, B, K]`` (S = globals + locals, globals first), teacher probabilities ``[G, B, K]``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iters: int = 3) -> torch.Tensor:
    """Doubly-normalised soft assignment ``[N, K]`` (rows sum to 1) over the global batch."""
    q = torch.exp((logits.float() - logits.float().max()) / temp).t()  # [K, N]
    n = torch.tensor(q.shape[1], device=q.device, dtype=q.dtype)
    if _dist_on():
        dist.all_reduce(n)
    k = q.shape[0]
    total = q.sum()
    if _dist_on():
        dist.all_reduce(total)
    q /= total
    for _ in range(iters):
        rows = q.sum(dim=1, keepdim=True)
        if _dist_on():
            dist.all_reduce(rows)
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
        flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
        if mode == "sinkhorn":
            probs = sinkhorn_knopp(flat, teacher_temp, iters)
        else:
            probs = F.softmax((flat - self.center) / teacher_temp, dim=-1)
        return probs.reshape(teacher_logits.shape)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
        total = flat.sum(dim=0, keepdim=True)
        count = torch.tensor(float(flat.shape[0]), device=flat.device)
        if _dist_on():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """student ``[S, B, K]`` logits, teacher ``[G, B, K]`` probabilities -> scalar loss."""
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        n_global = teacher_probs.shape[0]
        # [G, S]: cross-entropy of every (teacher crop, student crop) pair, batch-averaged.
        ce = -torch.einsum("tbk,sbk->ts", teacher_probs.float(), log_p) / student_logits.shape[1]
        keep = torch.ones_like(ce, dtype=torch.bool)
        idx = torch.arange(min(n_global, student_logits.shape[0]), device=ce.device)
        keep[idx, idx] = False
        return ce[keep].sum() / keep.sum().clamp(min=1)
