"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): a student
matches the centred, sharpened softmax of an EMA teacher over K prototypes; no negatives, no labels.

Networks: the student is the trainer's encoder + projector (DINO's head MLP, its bottleneck output z)
and this method's weight-normalised prototype layer (prototypes.py); the teacher is an EMA copy of
both, its momentum rising from `momentum` to 1 on a cosine over the run. The teacher sees the global
views only (TaskLayout.n_global: under multi-crop, augment.crops' first group), the student every view.

Loss, with unit bottleneck rows, T_t the teacher's logits of global view t, S_s the student's of view s:

    mean over t, s != t, and the images of  -sum_k softmax((T_t - c) / teacher_temp)_k log softmax(S_s / student_temp)_k

computed by the fused `proto_xent` kernel (the views x batch x K logits are never stored on a GPU).
The centre c (K,) follows the teacher's mean logits over the global batch with momentum
`center_momentum` after every step (the rows are the gathered global task, so under torchrun the mean
is the all-reduced one DINO's code computes). The teacher's temperature rises linearly from
`warmup_teacher_temp` to `teacher_temp` over the first `warmup_teacher_temp_epochs` epochs, and the
student's prototype layer is frozen for the first `freeze_last_layer_epochs` epochs, as in DINO's code.

Differences from DINO's code, chosen: the head MLP is fastssl's projector (ReLU, optional BN; DINO's
has GELU and no BN), its width set by model.projector_*; gradient clipping and the weight-decay
schedule are not applied.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fastssl import config as config_mod
from fastssl.kernels import narrow, proto_xent, unit_rows
from fastssl.loaders.rules import check_temperature, int_in, require
from fastssl.task.builder import TaskBatch
from fastssl.task.layout import TaskLayout

from . import register
from .base import Method, MethodContext
from .momentum import ema_update_, make_target, momentum_at
from .prototypes import MAX_PROTOTYPES, Prototypes
from .view_pairs import refuse_query_mix


def teacher_temperature(epoch: int, warmup: float, final: float, warmup_epochs: int) -> float:
    """DINO's schedule: linspace(warmup, final, warmup_epochs)[epoch] during the warm-up, final after."""
    if epoch >= warmup_epochs:
        return final
    return warmup + (final - warmup) * epoch / max(warmup_epochs - 1, 1)


@register("dino")
class DINOHead(Method):
    """DINO's prototypes, EMA teacher, centre and temperatures (module docstring)."""

    @dataclass
    class Settings:
        prototypes: int = 65536           # K, DINO's out_dim
        momentum: float = 0.996           # teacher EMA momentum at step 0, rising to 1 by a cosine
        student_temp: float = 0.1
        teacher_temp: float = 0.04        # after the warm-up (DINO: 0.04; 0.07 for its long ViT runs)
        warmup_teacher_temp: float = 0.04
        warmup_teacher_temp_epochs: int = 0   # DINO's ViT recipes: 30 (0.04 -> 0.07)
        center_momentum: float = 0.9
        norm_last_layer: bool = True      # weight-norm gain fixed at 1 (DINO's default; false for its ViT-S)
        freeze_last_layer_epochs: int = 1

    momentum_network = "teacher"

    def __init__(self, dim: int, settings: Settings, ctx: MethodContext):
        super().__init__()
        self.settings, self.impl, self.operand_dtype = settings, ctx.impl, ctx.operand_dtype
        self.total_steps, self.steps_per_epoch = ctx.total_steps, ctx.steps_per_epoch
        self.prototypes = Prototypes(dim, settings.prototypes, trainable_scale=not settings.norm_last_layer)
        self.register_buffer("center", torch.zeros(settings.prototypes))
        self.teacher_prototypes = copy.deepcopy(self.prototypes).requires_grad_(False)
        if ctx.online is not None:
            self.teacher = make_target(ctx.online)
            # Plain attributes, not submodules (as BYOL's target): the online network is the trainer's.
            self.__dict__["_teacher_forward"] = torch.compile(self.teacher) if ctx.compile else self.teacher
            self._pairs = ([*self.teacher.parameters(), *self.teacher_prototypes.parameters()],
                           [*ctx.online.parameters(), *self.prototypes.parameters()])
        self._frozen, self._teacher_temp = False, settings.teacher_temp
        self._batch_center: torch.Tensor | None = None

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        key = "method.dino."
        int_in(key + "prototypes", settings.prototypes, 1, MAX_PROTOTYPES)
        require(0 <= settings.momentum <= 1, key + "momentum", settings.momentum, "must be in [0, 1]")
        require(0 <= settings.center_momentum <= 1, key + "center_momentum", settings.center_momentum,
                "must be in [0, 1]")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            check_temperature(key + name, getattr(settings, name))
        int_in(key + "warmup_teacher_temp_epochs", settings.warmup_teacher_temp_epochs, 0, config_mod.MAX_EPOCHS)
        int_in(key + "freeze_last_layer_epochs", settings.freeze_last_layer_epochs, 0, config_mod.MAX_EPOCHS)
        refuse_query_mix("dino", cfg, "matches a teacher's view of each image")

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> DINOHead:
        return cls(ctx.embed_dim, settings, ctx)

    def begin_step(self, step: int) -> None:
        s, epoch = self.settings, step // max(self.steps_per_epoch, 1)
        self._frozen = epoch < s.freeze_last_layer_epochs
        self._teacher_temp = teacher_temperature(epoch, s.warmup_teacher_temp, s.teacher_temp,
                                                 s.warmup_teacher_temp_epochs)

    @torch.no_grad()
    def targets(self, task: TaskBatch) -> torch.Tensor:
        """The teacher's bottleneck rows of the global views (n_global x B, view-major)."""
        return self._teacher_forward(task.clean_views[:task.layout.n_global])[1]

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: the student's rows of every view (V*B, D); targets: the teacher's of the global views."""
        if targets is None:
            raise ValueError("dino: the loss needs the teacher's rows of the global views (targets)")
        batch = layout.batch(z, "dino")
        student = narrow(unit_rows(z), self.operand_dtype).view(layout.n_views, batch, -1)
        teacher = narrow(unit_rows(targets.detach()), self.operand_dtype).view(-1, batch, z.shape[1])
        out = proto_xent(student, teacher, narrow(self.prototypes.weight_normed(self._frozen), self.operand_dtype),
                         narrow(self.teacher_prototypes.weight_normed(), self.operand_dtype), self.center,
                         student_temp=self.settings.student_temp, teacher_temp=self._teacher_temp, impl=self.impl)
        self._batch_center = out.teacher_mean.detach()
        return out.loss

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """The centre follows this step's teacher mean; the teacher follows the student."""
        if self._batch_center is not None:
            self.center.lerp_(self._batch_center.to(self.center.dtype), 1 - self.settings.center_momentum)
        ema_update_(*self._pairs, momentum_at(step, self.total_steps, self.settings.momentum))
