"""Meta-architecture: student, EMA teacher, Gram teacher and the five losses, each switched on by weight > 0.

``MetaArch.forward(batch, teacher_temp, step, student=...)`` returns a dict of named loss terms
(``dino``, ``ibot``, ``koleo``, ``gram``, ``contrast`` for the active ones, and ``total``, their
weighted sum). The student is a single module whose one ``forward`` call runs the backbone on
global and local crops and every head, so DDP or FSDP2 can wrap it from outside (pass the
wrapped module as ``student``). Batches are crop-major: crop ``c`` of sample ``b`` is row
``c * B + b``; global crops come first in every per-crop tensor. Under torchrun each loss term
is ``W`` x this rank's share of the global loss, or per rank by design (KoLeo): see each
loss's docstring and ``train.losses.distributed``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from train.config import TrainConfig
from train.diagnostics import effective_rank, target_stats
from train.losses import (
    ContrastLoss,
    DINOClsTokenLoss,
    GramLoss,
    IBOTPatchLoss,
    KoLeoLoss,
    sinkhorn_knopp,
)
from train.losses.distributed import upcast
from train.models import DINOHead, Predictor, ProjectionHead, build_backbone, model_kwargs
from train.models.pretrained import load_pretrained_backbone


def backbone_kwargs(cfg: TrainConfig) -> dict:
    m = cfg.model
    return model_kwargs(
        m.arch, cfg.crops.global_size, m.patch_size, m.embed_dim, m.depth, m.num_heads, m.reg_tokens,
        m.drop_path_rate, m.layerscale, m.conv_stem,
    )  # fmt: skip


class Student(nn.Module):
    """Backbone and heads; ``forward`` returns every output the losses need."""

    def __init__(self, cfg: TrainConfig, with_contrast: bool = True) -> None:
        super().__init__()
        m, loss = cfg.model, cfg.loss
        self.backbone = build_backbone(backbone_kwargs(cfg))
        dim = self.backbone.embed_dim
        head = (m.head_prototypes, m.head_hidden, m.head_bottleneck, m.head_layers)
        self.dino_head = DINOHead(dim, *head) if loss.dino_weight > 0 else None
        self.ibot_head = None
        self.predictor = None
        if loss.ibot_weight > 0 and loss.ibot_form == "prototypes":
            self.ibot_head = (
                DINOHead(dim, *head) if m.ibot_separate_head or self.dino_head is None else None
            )
        if loss.ibot_weight > 0 and loss.ibot_form == "regression" and with_contrast:
            self.predictor = Predictor(dim, m.head_hidden)
        self.contrast_head = (
            ProjectionHead(dim, m.contrast_hidden, m.contrast_dim)
            if loss.contrast_weight > 0 and with_contrast
            else None
        )
        self.contrast_all = loss.contrast_crops == "all"
        self.ibot_on = loss.ibot_weight > 0

    def patch_head(self) -> DINOHead | None:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def forward(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, masks: torch.Tensor
    ) -> dict:
        g = self.backbone(global_crops, masks)
        cls = g["cls"]
        if local_crops is not None:
            cls = torch.cat([cls, self.backbone(local_crops)["cls"]])
        out = {"cls_global": g["cls"], "patches_global": g["patches"]}
        if self.dino_head is not None:
            out["dino_logits"] = self.dino_head(cls)
        if self.ibot_on:
            masked = g["patches"][masks.flatten(1)]
            if self.predictor is not None:
                out["ibot_out"] = self.predictor(masked)
            elif self.patch_head() is not None:
                out["ibot_out"] = self.patch_head()(masked)
        if self.contrast_head is not None:
            out["z"] = self.contrast_head(cls if self.contrast_all else g["cls"])
        return out


class Teacher(nn.Module):
    """EMA copy of the student's backbone and prototype heads (no contrastive head)."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(student.backbone)
        self.dino_head = copy.deepcopy(student.dino_head)
        self.ibot_head = copy.deepcopy(student.ibot_head)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """A teacher always runs in eval mode: no drop-path or dropout in its targets, whatever
        mode the student (or the ``MetaArch`` holding both) is put in."""
        return super().train(False)

    def forward(self, global_crops: torch.Tensor, masks: torch.Tensor, regression: bool) -> dict:
        g = self.backbone(global_crops)
        out = {"cls": g["cls"], "patches": g["patches"]}
        if self.dino_head is not None:
            out["dino_logits"] = self.dino_head(g["cls"])
        masked = g["patches"][masks.flatten(1)]
        head = self.ibot_head if self.ibot_head is not None else self.dino_head
        out["ibot_target"] = masked if regression or head is None else head(masked)
        return out


class MetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        loss = cfg.loss
        self.student = Student(cfg)
        if cfg.model.pretrained:
            self.pretrained_info = load_pretrained_backbone(
                self.student.backbone, cfg.model.pretrained
            )
        else:
            self.pretrained_info = None
        self.teacher = Teacher(self.student)
        self.gram_teacher = None
        if loss.gram_weight > 0:
            self.gram_teacher = copy.deepcopy(self.student.backbone)
            for p in self.gram_teacher.parameters():
                p.requires_grad_(False)
            self.gram_teacher.eval()
        k = cfg.model.head_prototypes
        self.dino_loss = DINOClsTokenLoss(k, loss.student_temp, loss.center_momentum)
        self.ibot_loss = IBOTPatchLoss(k, loss.student_temp, loss.center_momentum)
        self.koleo_loss = KoLeoLoss()
        self.gram_loss = GramLoss()
        self.contrast_loss = ContrastLoss(loss.contrast_temp)
        # Step at which the Gram teacher was last copied from the EMA teacher (-1: never).
        self.register_buffer("gram_snapshot_step", torch.tensor(-1, dtype=torch.long))
        self.last_stats: dict[str, float] = {}
        # The last step's teacher targets, L_image and student CLS features, kept (detached) so
        # that the collapse diagnostics are computed only when they are logged, not every step.
        self._collapse_inputs: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> MetaArch:
        """Only the student follows ``mode``; the EMA and Gram teachers stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.gram_teacher is not None:
            self.gram_teacher.eval()
        return self

    def collapse_stats(self) -> dict[str, float]:
        """``train.diagnostics`` of the last forward: the teacher's target statistics (when
        L_image is on) and the effective rank of the student's CLS features."""
        inputs = self._collapse_inputs
        stats: dict[str, float] = {}
        if "probs" in inputs:
            stats.update(target_stats(inputs["probs"], float(inputs["image_loss"])))
        if "cls" in inputs:
            stats["cls_rank"] = effective_rank(inputs["cls"])
        return stats

    # -------------------------------------------------------------------- Gram teacher

    def gram_active(self, step: int) -> bool:
        if self.gram_teacher is None:
            return False
        return self.pretrained_info is not None or int(self.gram_snapshot_step) >= 0

    @torch.no_grad()
    def maybe_refresh_gram(self, step: int) -> bool:
        """Copy the EMA teacher into the Gram teacher at ``gram_start_step`` and on the refresh schedule."""
        if self.gram_teacher is None:
            return False
        loss = self.cfg.loss
        last = int(self.gram_snapshot_step)
        due = False
        if self.pretrained_info is None and last < 0:
            due = step >= loss.gram_start_step
        elif loss.gram_refresh_steps > 0:
            since = step - (last if last >= 0 else 0)
            due = since >= loss.gram_refresh_steps
        if due:
            for dst, src in zip(
                self.gram_teacher.parameters(), self.teacher.backbone.parameters(), strict=True
            ):
                _local(dst).copy_(_local(src))
            self.gram_snapshot_step.fill_(step)
        return due

    # -------------------------------------------------------------------- EMA

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        student = dict(self.student.named_parameters())
        pairs = [(_local(t), _local(student[name])) for name, t in self.teacher.named_parameters()]
        teacher_params = [t for t, _ in pairs]
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, [s.detach() for _, s in pairs], alpha=1.0 - momentum)

    def last_layer_params(self) -> list[nn.Parameter]:
        return [
            h.last_layer.weight
            for h in (self.student.dino_head, self.student.ibot_head)
            if h is not None
        ]

    # -------------------------------------------------------------------- losses

    def _probs(self, logits: torch.Tensor, temp: float, loss_module: nn.Module) -> torch.Tensor:
        if self.cfg.loss.centering == "sinkhorn":
            return sinkhorn_knopp(
                logits.reshape(-1, logits.shape[-1]), temp, self.cfg.loss.sinkhorn_iters
            ).reshape(logits.shape)
        return torch.softmax((upcast(logits) - loss_module.center) / temp, dim=-1)

    def forward(
        self, batch: dict, teacher_temp: float, step: int, student: nn.Module | None = None
    ) -> dict:
        cfg = self.cfg.loss
        student = student if student is not None else self.student
        global_crops, local_crops, masks = batch["global"], batch.get("local"), batch["masks"]
        labels = batch["labels"]
        n_batch = labels.shape[0]
        n_global = global_crops.shape[0] // n_batch
        n_local = local_crops.shape[0] // n_batch if local_crops is not None else 0
        regression = cfg.ibot_form == "regression"

        with torch.no_grad():
            t_out = self.teacher(global_crops, masks, regression)
        _reshard(self.teacher)
        s_out = student(global_crops, local_crops, masks)
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}

        if cfg.dino_weight > 0:
            t_logits = upcast(t_out["dino_logits"]).reshape(n_global, n_batch, -1)
            probs = self._probs(t_logits, teacher_temp, self.dino_loss)
            s_logits = s_out["dino_logits"].reshape(n_global + n_local, n_batch, -1)
            losses["dino"] = self.dino_loss(s_logits, probs)
            self._collapse_inputs["probs"] = probs.detach()
            self._collapse_inputs["image_loss"] = losses["dino"].detach()
            if cfg.centering == "centering":
                self.dino_loss.update_center(t_logits)
        if cfg.ibot_weight > 0 and "ibot_out" in s_out:
            flat = masks.flatten(1)
            image_index = flat.nonzero()[:, 0]
            stats["masked_patches"] = float(flat.sum())
            if regression:
                losses["ibot"] = self.ibot_loss.regression(s_out["ibot_out"], t_out["ibot_target"])
            else:
                t_patch = upcast(t_out["ibot_target"])
                probs = self._probs(t_patch, teacher_temp, self.ibot_loss)
                losses["ibot"] = self.ibot_loss(
                    s_out["ibot_out"], probs, image_index, flat.shape[0]
                )
                if cfg.centering == "centering":
                    self.ibot_loss.update_center(t_patch)
        if cfg.koleo_weight > 0:
            cls = s_out["cls_global"].reshape(n_global, n_batch, -1)
            losses["koleo"] = sum(self.koleo_loss(cls[c], labels) for c in range(n_global))
        if cfg.gram_weight > 0 and self.gram_active(step):
            with torch.no_grad():
                g_patches = self.gram_teacher(global_crops)["patches"]
            _reshard(self.gram_teacher)
            losses["gram"] = self.gram_loss(s_out["patches_global"], g_patches)
        if cfg.contrast_weight > 0:
            n_crops = s_out["z"].shape[0] // n_batch
            losses["contrast"] = self.contrast_loss(s_out["z"], labels.repeat(n_crops))
            stats.update({f"contrast_{k}": v for k, v in self.contrast_loss.last_stats.items()})
        weights = {
            "dino": cfg.dino_weight, "ibot": cfg.ibot_weight, "koleo": cfg.koleo_weight,
            "gram": cfg.gram_weight, "contrast": cfg.contrast_weight,
        }  # fmt: skip
        total = sum(weights[name] * value for name, value in losses.items())
        losses["total"] = (
            total if isinstance(total, torch.Tensor) else s_out["cls_global"].sum() * 0.0
        )
        with torch.no_grad():
            cls_n = torch.nn.functional.normalize(s_out["cls_global"].float(), dim=-1)
            stats["cls_std"] = float(cls_n.std(dim=0).mean())
        self._collapse_inputs["cls"] = s_out["cls_global"].detach()
        self.last_stats = stats
        return losses


def _reshard(module: nn.Module) -> None:
    """FSDP2 keeps the root's parameters gathered after a forward that has no backward
    (teachers): free them again, and keep the local shards aligned with the student's for EMA."""
    if hasattr(module, "reshard"):
        module.reshard()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor parameter, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t
