"""The collectives the losses share, and the one rule that makes a loss world-size invariant.

On ``W`` ranks every loss in this package returns, on rank ``r``::

    L_r = W * (rank r's share of the global loss)

where the global loss is the one a single process holding the whole global batch computes.
Two things follow, and the tests (``tests/train/test_invariance.py``) check both:

* the mean of ``L_r`` over ranks (what ``train.train`` logs) is the global loss;
* DDP and FSDP2 *average* gradients over ranks, so they apply ``1/W sum_r dL_r/dθ = dL/dθ``:
  the gradient of the global loss. A rank's gradient on its own input rows is therefore ``W``
  times the global loss's gradient on those rows (divide by ``W`` to compare with one process).

For a mean over rows this means the rank's *sum* divided by ``N_global / W`` (which is the rank's
own mean when every rank holds the same number of rows). A term that reads other ranks' rows
(``L_contrast``) gathers them with an autograd-aware all-gather, whose backward sums every
rank's gradient on a row back to the rank that owns it. Without ``torch.distributed`` (one
process) every helper is a no-op and the losses compute exactly what they always did.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if dist_on() else 1


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 stay as they are (the invariance tests run in fp64)."""
    return x if x.dtype == torch.float64 else x.float()


def all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce of ``x`` over every rank (no-op on one process); returns ``x``."""
    if dist_on():
        dist.all_reduce(x, op=op)
    return x


def share_divisor(count: torch.Tensor) -> torch.Tensor:
    """``N_global / W`` from this rank's row ``count`` (a float tensor, all-reduced in place).

    A rank's sum of per-row terms divided by this is ``W`` times its share of the global mean.
    Clamped so that no row anywhere gives 0 / (1/W) = 0, never NaN.
    """
    return all_reduce(count).clamp(min=1) / world_size()


def gather_rows(x: torch.Tensor, grad: bool = True) -> tuple[torch.Tensor, int]:
    """All-gather ``x`` along dim 0 (any row count per rank); returns (rows of every rank in
    rank order, offset of this rank's rows).

    With ``grad`` the gather is autograd-aware: the gradient that any rank's loss puts on a row
    is summed back onto the rank that owns it (``all_gather_single``'s backward is a sum
    reduce-scatter), so no rank's rows are detached.
    """
    if not dist_on() or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = torch.zeros(world, dtype=torch.long, device=x.device)
    sizes[rank] = x.shape[0]
    dist.all_reduce(sizes)
    counts = sizes.tolist()
    biggest = max(counts)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, biggest - x.shape[0]))
    if grad:
        # The autograd all-gather that torch.distributed.nn.functional.all_gather's deprecation
        # points to (gather_dim 0 only).
        from torch.distributed._functional_collectives import all_gather_single

        gathered = all_gather_single(padded, 0, dist.group.WORLD)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach().contiguous())
        gathered = torch.cat(parts)
    rows = [gathered[r * biggest : r * biggest + n] for r, n in enumerate(counts)]
    return torch.cat(rows), sum(counts[:rank])
