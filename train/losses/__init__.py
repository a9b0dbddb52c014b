"""Losses of the physics-augmented DINO objective, one module each (see each file's formula)."""

from train.losses.contrast import ContrastLoss
from train.losses.dino_clstoken import DINOClsTokenLoss, sinkhorn_knopp
from train.losses.gram import GramLoss
from train.losses.ibot_patch import IBOTPatchLoss
from train.losses.koleo import KoLeoLoss

__all__ = [
    "ContrastLoss",
    "DINOClsTokenLoss",
    "GramLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "sinkhorn_knopp",
]
