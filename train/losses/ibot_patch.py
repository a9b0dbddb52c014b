"""``L_iBOT``: masked-patch prediction against the teacher's patch targets (unmasked input).

Prototype form (DINOv2/v3 default), for masked student patches m of image b::

    L = 1/N_img sum_b 1/M_b sum_{m in b} - sum_k q_m[k] * log softmax(s_m / tau_s)[k]

with ``q_m`` the teacher's (centred or Sinkhorn-Knopp) probabilities for the same patch.
Regression form: ``L = 1/M sum_m ||h(p'_m) - p_m||^2`` between the predictor output on the
masked student patch and the teacher's patch feature (mean over feature dims, fp32).
``N_img`` counts images with at least one masked patch; no masked patch gives 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class IBOTPatchLoss(nn.Module):
    def __init__(
        self, prototypes: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, prototypes))

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        flat = teacher_logits.float()
        total = flat.sum(dim=0, keepdim=True)
        count = torch.tensor(float(max(flat.shape[0], 1)), device=flat.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(
            total / count.clamp(min=1), alpha=1 - self.center_momentum
        )

    @staticmethod
    def _per_image_mean(
        per_patch: torch.Tensor, image_index: torch.Tensor, n_images: int
    ) -> torch.Tensor:
        sums = torch.zeros(n_images, device=per_patch.device, dtype=per_patch.dtype).index_add(
            0, image_index, per_patch
        )
        counts = torch.bincount(image_index, minlength=n_images).to(per_patch.dtype)
        has = counts > 0
        if not bool(has.any()):
            return per_patch.sum() * 0.0
        return (sums[has] / counts[has]).mean()

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        image_index: torch.Tensor,
        n_images: int,
    ) -> torch.Tensor:
        """``[M, K]`` student logits and teacher probabilities of the masked patches; ``image_index[M]``."""
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_patch = -(teacher_probs.float() * log_p).sum(dim=-1)
        return self._per_image_mean(per_patch, image_index, n_images)

    def regression(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1/M sum ||h(p'_m) - p_m||^2`` (squared error averaged over feature dims)."""
        if predicted.shape[0] == 0:
            return predicted.sum() * 0.0
        return (predicted.float() - target.float().detach()).pow(2).mean(dim=-1).mean()
