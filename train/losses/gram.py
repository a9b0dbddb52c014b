"""``L_Gram`` (DINOv3): keep the student's patch-similarity structure close to a Gram teacher's.

For each of the ``C`` student global crops (all global crops of the batch: ``C = G * B``) with
``N`` patches and L2-normalised patch features ``P_S, P_G`` of shape [N, D]::

    L = 1/C sum_c 1/N^2 || P_S P_S^T - P_G P_G^T ||_F^2

(the mean squared error over every Gram entry). ``P_S`` is the student's output on its global
crops as the student sees them, i.e. with the iBOT mask tokens in place of the masked patches
(the same forward that feeds L_image and L_iBOT; no extra unmasked pass). ``P_G`` is the frozen
Gram teacher's output on the same crops without masks. Identical features give exactly 0.
Negative similarities are kept (DINOv3's loss can clip them to 0, ``remove_neg``). fp32
(fp64 stays fp64).

Per rank and global (``train.losses.distributed``): each crop's term is computed on the rank
that holds the crop and ``C`` counts crops over every rank: a rank returns its crops' sum
divided by ``C_global / W``, so the rank mean is the global loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.losses.distributed import dist_on, share_divisor, upcast


class GramLoss(nn.Module):
    def forward(self, student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
        """``[C, N, D]`` student and Gram-teacher patch tokens -> scalar loss
        (on ``W`` ranks: ``W`` x this rank's share of the global loss)."""
        with torch.autocast(device_type=student_patches.device.type, enabled=False):
            s = F.normalize(upcast(student_patches), dim=-1)
            t = F.normalize(upcast(teacher_patches).detach(), dim=-1)
            diff = s @ s.transpose(1, 2) - t @ t.transpose(1, 2)
            n = s.shape[1]
            per_crop = diff.pow(2).sum(dim=(1, 2)).div(n * n)
            if dist_on():  # sum over this rank's crops / (C_global / W)
                count = torch.tensor(float(per_crop.shape[0]), device=per_crop.device)
                return per_crop.sum() / share_divisor(count.to(per_crop.dtype))
            return per_crop.mean()
