"""Projection heads: DINO/iBOT prototype head, contrastive projection head, iBOT predictor.

``DINOHead``: MLP (``layers`` linear layers, GELU) down to a bottleneck, L2 normalisation,
then a prototype layer whose rows are kept at unit norm (weight normalisation with the
gain fixed to 1, as DINO). The prototype layer is ``last_layer`` so the trainer can freeze
it for the first steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    if layers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    mods: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.GELU()]
    for _ in range(layers - 2):
        mods += [nn.Linear(hidden, hidden), nn.GELU()]
    mods.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*mods)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class NormedLinear(nn.Module):
    """``y = x W^T`` with every row of ``W`` divided by its norm (weight norm, gain 1)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=-1, eps=1e-6))


class DINOHead(nn.Module):
    """``x[N, D] -> logits[N, prototypes]`` (use ``bottleneck`` + ``prototypes`` separately for iBOT)."""

    def __init__(
        self,
        in_dim: int,
        prototypes: int,
        hidden: int = 2048,
        bottleneck: int = 256,
        layers: int = 3,
    ) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, bottleneck, layers)
        self.mlp.apply(_init_linear)
        self.last_layer = NormedLinear(bottleneck, prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return self.last_layer(z)


class ProjectionHead(nn.Module):
    """Contrastive projection ``x[N, D] -> z[N, out]``, L2-normalised."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, out_dim, 2)
        self.mlp.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)


class Predictor(nn.Module):
    """iBOT regression predictor ``h``: masked student patch features -> teacher patch features."""

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = _mlp(dim, hidden, dim, 2)
        self.mlp.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
