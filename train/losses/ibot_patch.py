"""``L_iBOT``: masked-patch prediction against the teacher's patch targets (unmasked input).

Prototype form (DINOv2/v3 default), for masked student patches m of image b::

    L = 1/N_img sum_b 1/M_b sum_{m in b} - sum_k q_m[k] * log softmax(s_m / tau_s)[k]

with ``q_m`` the teacher's (centred or Sinkhorn-Knopp) probabilities for the same patch.
Regression form: ``L = 1/M sum_m ||h(p'_m) - p_m||^2`` between the predictor output on the
masked student patch and the teacher's patch feature (mean over feature dims, fp32).
``N_img`` counts images with at least one masked patch; no masked patch gives 0.

Per rank and global (``train.losses.distributed``): everything is global. ``N_img`` (and ``M``
in the regression form) count over every rank: a rank returns its images' sum divided by
``N_img_global / W``, so ranks that hold different numbers of masked images still give the
global loss; ``M_b`` is per image and an image lives on one rank. The centre is an EMA of the
mean teacher logit over every rank's masked patches, and a step with no masked patch on any
rank leaves it unchanged (an empty mean is no evidence that the centre should decay to 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.losses.distributed import all_reduce, dist_on, share_divisor, upcast


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
        """EMA of the mean of ``[M, K]`` masked-patch teacher logits over every rank; no-op when
        no rank has a masked patch (decided on the device: no host sync)."""
        flat = upcast(teacher_logits)
        total = all_reduce(flat.sum(dim=0, keepdim=True))
        count = all_reduce(torch.tensor(float(flat.shape[0]), device=flat.device))
        updated = self.center.clone().mul_(self.center_momentum)
        updated.add_(total / count.clamp(min=1), alpha=1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, updated, self.center))

    def _per_image_mean(
        self, per_patch: torch.Tensor, image_index: torch.Tensor, n_images: int
    ) -> torch.Tensor:
        sums = torch.zeros(n_images, device=per_patch.device, dtype=per_patch.dtype).index_add(
            0, image_index, per_patch
        )
        counts = torch.bincount(image_index, minlength=n_images).to(per_patch.dtype)
        has = counts > 0
        if dist_on():  # sum over this rank's images / (N_img_global / W)
            per_image = sums / counts.clamp(min=1)
            return per_image.sum() / share_divisor(has.sum().to(per_patch.dtype))
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
        log_p = F.log_softmax(upcast(student_logits) / self.student_temp, dim=-1)
        per_patch = -(upcast(teacher_probs) * log_p).sum(dim=-1)
        return self._per_image_mean(per_patch, image_index, n_images)

    def regression(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1/M sum ||h(p'_m) - p_m||^2`` (squared error averaged over feature dims)."""
        per_patch = (upcast(predicted) - upcast(target).detach()).pow(2).mean(dim=-1)
        if dist_on():  # sum over this rank's patches / (M_global / W)
            count = torch.tensor(float(per_patch.shape[0]), device=per_patch.device)
            return per_patch.sum() / share_divisor(count.to(per_patch.dtype))
        if predicted.shape[0] == 0:
            return predicted.sum() * 0.0
        return per_patch.mean()
