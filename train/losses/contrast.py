"""``L_contrast``: multi-positive InfoNCE over crops, positives = other crops of the same material.

For anchors i against every crop k of the global batch::

    L = -1/|A| sum_{i in A} log( sum_{j in P(i)} exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) )

with ``s_ij`` the cosine similarity of the projections, ``P(i)`` every *other* crop whose
material label equals i's, and ``A`` the anchors with at least one positive (the others are
skipped, never NaN). With exactly one positive per anchor this is InfoNCE. fp32 (fp64 stays
fp64), row max subtracted (log-sum-exp).

Per rank and global (``train.losses.distributed``): everything is global. Each rank's crops are
the anchors it computes, against the crops of every rank (positives and negatives alike), all
gathered with an autograd-aware all-gather: a crop's gradient as another rank's positive or
negative flows back to the rank that owns it. ``|A|`` counts anchors over every rank, and a
rank returns its anchors' sum divided by ``|A_global| / W``, so DDP's gradient average is the
gradient of the global loss. ``last_stats`` counts this rank's anchors only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.losses.distributed import dist_on, gather_rows, share_divisor, upcast


class ContrastLoss(nn.Module):
    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.last_stats: dict[str, float] = {}

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``z[N, D]`` projections of this rank's crops, ``labels[N]`` int64 -> scalar loss
        (on ``W`` ranks: ``W`` x this rank's share of the global loss)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(upcast(z), dim=-1)
            all_z, offset = gather_rows(z, grad=True)
            all_labels, _ = gather_rows(labels, grad=False)
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
            if dist_on():
                anchors = share_divisor(has_pos.sum().to(z.dtype))
                if not bool(has_pos.any()):
                    # Still through the gather: other ranks' anchors send gradient to these
                    # rows, and every rank must take part in the gather's backward.
                    return all_z.sum() * 0.0
            elif not bool(has_pos.any()):
                return z.sum() * 0.0
            # Only anchors with a positive enter the graph: a row of all -inf would give NaN
            # gradients through logsumexp even when its value is discarded.
            logits = logits[has_pos].masked_fill(self_mask[has_pos], float("-inf"))
            log_denom = torch.logsumexp(logits, dim=1)
            log_num = torch.logsumexp(logits.masked_fill(~pos[has_pos], float("-inf")), dim=1)
            if dist_on():  # sum over this rank's anchors / (|A_global| / W)
                return -(log_num - log_denom).sum() / anchors
            return -(log_num - log_denom).mean()
