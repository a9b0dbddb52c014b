"""``L_Gram`` (DINOv3): keep the student's patch-similarity structure close to a Gram teacher's.

For each image with ``N`` patches and L2-normalised patch features ``P_S, P_G`` of shape [N, D]::

    L = 1/B sum_b 1/N^2 || P_S P_S^T - P_G P_G^T ||_F^2

``P_S`` comes from the student's global crops (no masking), ``P_G`` from the frozen Gram
teacher on the same crops. Identical features give exactly 0. fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GramLoss(nn.Module):
    def forward(self, student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` student and Gram-teacher patch tokens -> scalar loss."""
        with torch.autocast(device_type=student_patches.device.type, enabled=False):
            s = F.normalize(student_patches.float(), dim=-1)
            t = F.normalize(teacher_patches.float().detach(), dim=-1)
            diff = s @ s.transpose(1, 2) - t @ t.transpose(1, 2)
            n = s.shape[1]
            return diff.pow(2).sum(dim=(1, 2)).div(n * n).mean()
