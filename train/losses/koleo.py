"""``L_KoLeo``: spread CLS features by the Kozachenko-Leonenko entropy estimator.

    L = -1/|A| sum_{i in A} log(rho_i + eps),   rho_i = min_{j in N(i)} ||x_i - x_j||_2

on L2-normalised features, where ``N(i)`` excludes ``i`` itself and every sample with the same
material label (so two views of one material are never pushed apart), and ``A`` is the set of
anchors that have at least one such neighbour. With no valid anchor (batch of 1, or one
material) the loss is 0, never NaN. Computed in fp32 (fp64 stays fp64) with autocast off.

Per rank by design, as in DINOv2: the nearest neighbour is searched within this rank's batch
only, and ``A`` and the mean are this rank's. Under DDP/FSDP2 (gradients averaged over ranks)
the objective is therefore the mean over ranks of each rank's KoLeo, ``1/W sum_r L(x_r)``, not
``L`` of the global batch: it depends on the per-rank batch size (nearest neighbours among
``B`` samples are farther apart than among ``W * B``), so changing the number of GPUs at a
fixed global batch changes this term, and its weight is tuned for a per-rank batch. No
collective, no cost. The world-size tests assert exactly this difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.losses.distributed import upcast


class KoLeoLoss(nn.Module):
    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``features[B, D]`` of this rank, optional ``labels[B]`` int64 -> scalar loss."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(upcast(features), dim=-1, eps=1e-8)
            n = x.shape[0]
            invalid = torch.eye(n, dtype=torch.bool, device=x.device)
            if labels is not None:
                invalid |= labels.view(-1, 1) == labels.view(1, -1)
            with torch.no_grad():
                sims = (x @ x.t()).masked_fill(invalid, -3.0)
                nearest = sims.argmax(dim=1)
            valid = ~invalid.all(dim=1)
            if not bool(valid.any()):
                return features.sum() * 0.0
            rho = (x[valid] - x[nearest[valid]]).norm(dim=-1)
            return -torch.log(rho + self.eps).mean()
