"""``L_contrast``: multi-positive InfoNCE over crops, positives = other crops of the same material.

For local anchors i (this rank's crops) against all crops k gathered from every rank::

    L = -1/|A| sum_{i in A} log( sum_{j in P(i)} exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) )

with ``s_ij`` the cosine similarity of the projections, ``P(i)`` every *other* crop whose
material label equals i's, and ``A`` the anchors with at least one positive (the others are
skipped, never NaN). With exactly one positive per anchor this is InfoNCE. Features and
labels are all-gathered across ranks; this rank's slice keeps its gradient. fp32, row max
subtracted (log-sum-exp).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` along dim 0; returns (gathered, offset of this rank's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes_int = [int(s.item()) for s in sizes]
    biggest = max(sizes_int)
    padded = torch.zeros((biggest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [p[:n] for p, n in zip(parts, sizes_int, strict=True)]
    parts[rank] = x  # keep the autograd graph for the local rows
    return torch.cat(parts, dim=0), sum(sizes_int[:rank])


class ContrastLoss(nn.Module):
    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.last_stats: dict[str, float] = {}

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z[N, D]`` projections of this rank's crops, ``labels[N]`` int64 -> scalar loss."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            all_z, offset = gather_with_grad(z)
            all_labels, _ = gather_with_grad(labels)
            n = z.shape[0]
            rows = torch.arange(n, device=z.device) + offset
            logits = z @ all_z.t() / self.temperature  # [n, N_all]
            self_mask = torch.zeros_like(logits, dtype=torch.bool)
            self_mask[torch.arange(n, device=z.device), rows] = True
            pos = (labels.view(-1, 1) == all_labels.view(1, -1)) & ~self_mask
            has_pos = pos.any(dim=1)
            remote = torch.ones_like(pos)
            remote[:, offset : offset + n] = False
            self.last_stats = {
                "anchors_with_positive": float(has_pos.sum()),
                "positives": float(pos.sum()),
                "positives_other_ranks": float((pos & remote).sum()),
            }
            if not bool(has_pos.any()):
                return z.sum() * 0.0
            # Only anchors with a positive enter the graph: a row of all -inf would give NaN
            # gradients through logsumexp even when its value is discarded.
            logits = logits[has_pos].masked_fill(self_mask[has_pos], float("-inf"))
            log_denom = torch.logsumexp(logits, dim=1)
            log_num = torch.logsumexp(logits.masked_fill(~pos[has_pos], float("-inf")), dim=1)
            return -(log_num - log_denom).mean()
