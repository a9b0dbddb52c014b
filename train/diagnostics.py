"""Collapse diagnostics for the DINO objective, logged every ``log_every`` steps.

DINO can fail in two ways (Caron et al. 2021, section 5.3): every image maps to the *same*
prototype (batch entropy -> 0), or every image maps to the *uniform* distribution (per-sample
entropy -> log K); in both the image loss carries no signal. From the teacher's target
probabilities ``q [G, B, K]`` and the student's CLS features this module gives:

* ``teacher_entropy``: mean over crops of ``H(q_b)``, divided by ``log K`` (1.0 = uniform);
* ``teacher_batch_entropy``: ``H(mean_b q_b) / log K`` (low = every image on few prototypes);
* ``teacher_mi``: ``H(mean_b q_b) - mean_b H(q_b)`` in nats, the mutual information between
  image and prototype: near 0 in either kind of collapse;
* ``student_teacher_kl``: ``L_image - H(q)`` in nats, what the student still has to learn;
* ``cls_rank``: effective rank (exp of the entropy of the normalised singular values, Roy and
  Vetterli 2007) of the student's L2-normalised CLS features of one batch.

All are computed on this rank's batch only (rank 0 logs them), and only on the steps that are
logged (``MetaArch.collapse_stats``): they describe the run, they do not enter the loss. ``collapse_warning`` turns them into a log line a user can act on.
"""

from __future__ import annotations

import math

import torch

# Per-sample teacher entropy above this fraction of log K after warm-up = near-uniform targets.
UNIFORM_FRACTION = 0.9
# Batch entropy below this fraction of log K (with low per-sample entropy) = one-prototype collapse.
CONCENTRATED_FRACTION = 0.1


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last dim."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)


@torch.no_grad()
def target_stats(teacher_probs: torch.Tensor, image_loss: float) -> dict[str, float]:
    """Stats of the teacher's targets ``[..., K]`` (rows sum to 1) and the image loss value."""
    q = teacher_probs.float().reshape(-1, teacher_probs.shape[-1])
    log_k = math.log(q.shape[-1])
    per_sample = float(_entropy(q).mean())
    batch = float(_entropy(q.mean(dim=0)))
    return {
        "teacher_entropy": per_sample / log_k,
        "teacher_batch_entropy": batch / log_k,
        "teacher_mi": batch - per_sample,
        "student_teacher_kl": image_loss - per_sample,
    }


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of L2-normalised, centred ``[N, D]`` rows."""
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.max()) < 1e-5:  # every row the same direction: rounding noise, not rank
        return 0.0
    return float(torch.exp(_entropy(s / s.sum())))


def collapse_warning(stats: dict[str, float], step: int, after_step: int) -> str | None:
    """A message when the DINO targets look collapsed after ``after_step`` (warm-up), else None."""
    if step <= after_step or "teacher_entropy" not in stats:
        return None
    h, hb = stats["teacher_entropy"], stats["teacher_batch_entropy"]
    if h > UNIFORM_FRACTION:
        return (
            f"DINO targets near uniform at step {step}: teacher entropy {h:.2f} of log K, mutual "
            f"information {stats['teacher_mi']:.2f} nats, so L_image gives almost no signal. Try a "
            "lower loss.teacher_temp, loss.centering=sinkhorn, fewer model.head_prototypes, or a "
            "lower optim.momentum_teacher"
        )
    if hb < CONCENTRATED_FRACTION:
        return (
            f"DINO targets collapsed onto few prototypes at step {step}: batch entropy {hb:.2f} of "
            "log K. Try loss.centering=sinkhorn or a higher loss.center_momentum"
        )
    return None
