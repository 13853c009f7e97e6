"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): each global view's balanced assignment to K prototypes (Sinkhorn-Knopp) is the target
the other views predict ("swapped prediction"); no negatives, no momentum network.

With unit embeddings z, unit prototype rows C (normalised in place before every step, as SwAV's code
does) and scores S = z C^T, for every global view t (TaskLayout.n_global, augment.crops' first group):
codes q_t = Sinkhorn(S_t / epsilon), computed without gradient over the global batch's rows (and the
queue's, once full); the loss is

    mean over t, s != t, and the images of  -sum_k q_t[k] log softmax(S_s / temperature)_k

Sinkhorn-Knopp alternately scales the prototypes' rows to equal mass 1/K and the samples' columns to
1/N; its last step normalises each sample, so q_t = softmax_k(S_t / epsilon + log r) with r the
prototypes' accumulated scaling. That is a teacher softmax centred by -epsilon log r, which lets the
fused `proto_xent` kernel compute the loss without storing views x batch x K logits; only the
(queue + batch) x K scores of one global view exist at a time. The rows are the gathered global task,
so under torchrun Sinkhorn's sums are over every rank's rows, as SwAV's all-reduced sums are.

The queue (`queue_length` > 0) keeps the last queue_length / batch steps' embeddings of each global view
(the global batch's, newest first), filled from epoch `queue_start_epoch` and used once full, as in
SwAV's code; it is part of the checkpoint. The prototypes are frozen for the first
`freeze_prototypes_epochs` epochs (SwAV's
freeze_prototypes_niters: 313 iterations at batch 4096, 5005 at batch 256, one ImageNet epoch either way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastssl import config as config_mod
from fastssl.kernels import narrow, proto_xent, unit_rows
from fastssl.loaders.rules import check_temperature, int_in, require
from fastssl.task.layout import TaskLayout

from . import register
from .base import Method, MethodContext
from .prototypes import MAX_PROTOTYPES, Prototypes
from .view_pairs import refuse_query_mix


@torch.no_grad()
def sinkhorn_log_scaling(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """log r (K,) for scores (N, K): SwAV's codes are softmax_k(scores / epsilon + log r).

    SwAV's Sinkhorn-Knopp in the log domain (the same iterates, without exp(scores / epsilon)
    overflowing at small epsilon): log r scales the prototypes to mass 1/K each, log c the samples to 1/N.
    """
    logits = scores / epsilon if scores.dtype == torch.float64 else scores.float() / epsilon
    n, k = logits.shape
    log_c = torch.zeros(n, dtype=logits.dtype, device=logits.device)
    for _ in range(iterations):
        log_r = -math.log(k) - torch.logsumexp(logits + log_c[:, None], dim=0)
        log_c = -math.log(n) - torch.logsumexp(logits + log_r[None, :], dim=1)
    return log_r


@register("swav")
class SwAVHead(Method):
    """SwAV's prototypes, Sinkhorn codes, swapped prediction and queue (module docstring)."""

    @dataclass
    class Settings:
        prototypes: int = 3000            # K (SwAV's ImageNet value)
        temperature: float = 0.1
        epsilon: float = 0.05             # Sinkhorn's entropy regularisation
        sinkhorn_iterations: int = 3
        queue_length: int = 0             # embeddings kept per global view (SwAV, ImageNet batch 256: 3840); 0: none
        queue_start_epoch: int = 15
        freeze_prototypes_epochs: int = 1

    MAX_SINKHORN = 100

    def __init__(self, dim: int, settings: Settings, ctx: MethodContext):
        super().__init__()
        self.settings, self.impl, self.operand_dtype = settings, ctx.impl, ctx.operand_dtype
        self.steps_per_epoch = ctx.steps_per_epoch
        self.prototypes = Prototypes(dim, settings.prototypes)
        self.register_buffer("queue", torch.zeros(ctx.global_views if settings.queue_length else 0,
                                                  settings.queue_length, dim))
        # Rows of each global view's queue filled so far: a buffer for the checkpoint, mirrored on the host
        # (read once after a load) so the step never waits on the device to decide whether the queue is full.
        self.register_buffer("queue_rows", torch.zeros((), dtype=torch.int64))
        self._queue_rows = 0
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_queue_rows", int(module.queue_rows)))
        self._frozen = False
        self._embeddings: torch.Tensor | None = None   # this step's global views' unit rows, for the queue

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        key = "method.swav."
        int_in(key + "prototypes", settings.prototypes, 1, MAX_PROTOTYPES)
        check_temperature(key + "temperature", settings.temperature)
        check_temperature(key + "epsilon", settings.epsilon)
        int_in(key + "sinkhorn_iterations", settings.sinkhorn_iterations, 1, cls.MAX_SINKHORN)
        int_in(key + "queue_length", settings.queue_length, 0, 1 << 20)
        batch = cfg.loader.batch_size
        require(settings.queue_length % batch == 0, key + "queue_length", settings.queue_length,
                f"must be a multiple of loader.batch_size ({batch}, global): a step enqueues one batch")
        int_in(key + "queue_start_epoch", settings.queue_start_epoch, 0, config_mod.MAX_EPOCHS)
        int_in(key + "freeze_prototypes_epochs", settings.freeze_prototypes_epochs, 0, config_mod.MAX_EPOCHS)
        refuse_query_mix("swav", cfg, "predicts each image's codes from its other views")

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> SwAVHead:
        return cls(ctx.embed_dim, settings, ctx)

    def begin_step(self, step: int) -> None:
        self.prototypes.normalize_()
        self._frozen = step // max(self.steps_per_epoch, 1) < self.settings.freeze_prototypes_epochs

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: every view's rows (V*B, D); the codes come from the global views' own rows, detached."""
        batch, views, s = layout.batch(z, "swav"), layout.n_views, self.settings
        rows = narrow(unit_rows(z), self.operand_dtype).view(views, batch, -1)
        weight = narrow(self.prototypes.weight, self.operand_dtype)
        teacher, columns = rows[:layout.n_global].detach(), weight.detach()
        use_queue = s.queue_length > 0 and self._queue_rows >= s.queue_length
        total = 0
        for t in range(layout.n_global):
            codes_of = teacher[t] if not use_queue else torch.cat([self.queue[t].to(teacher.dtype), teacher[t]])
            log_r = sinkhorn_log_scaling(codes_of @ columns.T, s.epsilon, s.sinkhorn_iterations)
            order = [t, *(v for v in range(views) if v != t)]   # view t first: the kernel pairs it with no other
            total = total + proto_xent(rows[order], teacher[t:t + 1], columns if self._frozen else weight, columns,
                                       -s.epsilon * log_r, student_temp=s.temperature, teacher_temp=s.epsilon,
                                       impl=self.impl).loss
        self._embeddings = teacher
        return total / layout.n_global

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """From queue_start_epoch on, this step's global-view rows join the front of the queue."""
        s = self.settings
        if not s.queue_length or self._embeddings is None or step // max(self.steps_per_epoch, 1) < s.queue_start_epoch:
            return
        batch = self._embeddings.shape[1]
        self.queue.copy_(torch.cat([self._embeddings.to(self.queue.dtype), self.queue[:, :-batch]], 1))
        self._queue_rows = min(self._queue_rows + batch, s.queue_length)
        self.queue_rows.fill_(self._queue_rows)
