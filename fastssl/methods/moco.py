"""MoCo v2 (He et al. 2020; Chen, Fan, Girshick and He 2020): queries against a momentum key encoder
and a queue of earlier keys.

Networks: the online encoder + projector (the trainer's SSLNet) embeds the queries; the key encoder is
an exponential moving average of it (momentum.make_target, never trained by gradient), updated after
every optimizer step with the constant momentum m (MoCo has no schedule on m). Keys are the key
encoder's projections of the unmixed views (TaskBatch.clean_views), L2-normalised.

Loss, for images i and ordered pairs of different views (v, w), query q = q_v(i) and its positive key
k+ = k_w(i), all unit rows, temperature T:

    L(v, w, i) = -log( exp(q.k+ / T) / (exp(q.k+ / T) + sum_j exp(q.queue_j / T)) )

averaged over all V (V - 1) pairs and the images. This is MoCo v2's exact form: the negatives are the
queue's K keys only; the keys of the other images of this batch are NOT negatives (the well-known
variant that also counts them, as SimCLR and MoCo v3 do, is not what MoCo v2 trains). For V = 2 it is
the symmetrised MoCo v2 loss (L(q_1, k_2) + L(q_2, k_1)) / 2.

The fused kernel: `sim_xent` takes one set of columns for all rows, while each row here has its own
positive. One extra feature carries it: row (v, w, i) is [q, q.k+] (D + 1 features) and the columns
are [0, ..., 0, 1] (column 0, every row's target) and [queue_j, 0]; then scale * row . column is
q.k+ / T for column 0 and q.queue_j / T for column 1 + j, exactly MoCo's logits, and the gradient
reaches q through both the queue products and q.k+. No per-row mask is needed (col_bias could not
give one), the (rows x (1 + K)) logits never exist on the GPU, and all pairs are one kernel call.

Queue: a buffer (K, D) of unit keys, oldest overwritten first (a ring buffer: `queue_ptr` is the next
slot), both in the checkpoint's `method` entry, so a resumed run continues with the same queue. It
starts as random unit rows, as MoCo does (drawn from the run's seeded torch RNG): until K keys have
been enqueued some negatives are random directions, nearly orthogonal to every query. After each
step (`after_step`, after the optimizer step, so once per admitted step and never from `logits`) the
keys of every view of every image of the GLOBAL batch are enqueued, V x B keys per step: the trainer
passes `targets` already gathered over the ranks (Dist.gather_rows), so under torchrun every rank
enqueues the same keys in the same order and the queues stay identical without any communication.
A step the non-finite guard skips enqueues nothing and leaves the key encoder untouched.

Query mixing (task.query_mix) is supported as by the other heads (task/layout.py mixed_loss): a
mixed query of image i is lam L(i) + (1 - lam) L(partner[i]), its positive key the unmixed view's
key of i, resp. of partner[i]; the queue is the same for both terms. Task rotation needs nothing:
a rotated image is another image.

Momentum default 0.99, not MoCo's ImageNet 0.999: the EMA's horizon is ~1 / (1 - m) steps, 1,000 at
0.999, more than a CIFAR-sized run of a few hundred steps has (the key encoder would stay close to
its random initialisation for most of it); 0.99 (100 steps) is what MoCo's authors use for CIFAR-10.

Shuffling BN (MoCo, section 3.3). A query and its positive key normalised over the same images share a
batch signature that the queue's keys (earlier batches) lack, and the network learns to spot it
instead of the image. MoCo's code shuffles the batch across GPUs before the key encoder and back
after, so a key's BN batch is not its query's; its authors' CIFAR-10 demo does it on one GPU with 8 BN
splits. Here `method.moco.shuffle_bn_splits` = s > 1 permutes each view's images by a function of
(seed, step) (a resumed run shuffles as an uninterrupted one), runs the key encoder on s equal chunks,
each one BN batch of B / s images (split BN exactly, per view or per run of equal-sized views as the
network's forward has it), and puts the keys back in order; s = 1 is one plain forward. The queries
keep their statistics over the whole batch (the online network is the trainer's), so a key's BN batch
is a random 1 / s of its query's: their batch means correlate about 1 / sqrt(s) (0.35 at s = 8), where
MoCo's shuffle over G GPUs gets about 1 / G and its demo, which splits the queries too, 1 / s. As the
loaders' batches come in random order, the chunks do the decorrelating; the permutation keeps each
chunk a fresh random subset whatever the row order, as MoCo's code has it. Each chunk's forward moves
the key encoder's BN running statistics once (the demo's SplitBatchNorm moves them once by the chunks'
mean): the same population estimate, read only where the key encoder runs in eval mode (fastssl export
--network target).

Under torchrun each rank shuffles and splits its own rows, with no communication: its queries are
normalised over its own batch, so a split of that batch is what decorrelates them; MoCo's cross-GPU
shuffle also puts other ranks' images into a key's BN batch, which here would cost an all-gather of the
images. model.sync_bn (SimCLR's global BN, against the same leak) is no substitute: it normalises
queries and keys over the same global batch, which helps where the negatives share the batch (SimCLR)
but not where they come from the queue; with it on, each key chunk's statistics are over that chunk
on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.kernels import narrow, sim_xent, unit_rows
from fastssl.loaders.rules import check_temperature, finite_in, int_in, require
from fastssl.loaders.sampler import cpu_generator
from fastssl.task.builder import TaskBatch
from fastssl.task.layout import TaskLayout, TaskLogits, mixed_loss

from . import register
from .base import Method, MethodContext
from .momentum import ema_update_, make_target


def pair_rows(n_views: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair of different views (v, w) for every image: (query row v*B + i, key view w),
    pair-major (w = v + 1, ..., v + V - 1 mod V), V (V - 1) B of each; made on the device (no copy)."""
    views = torch.arange(n_views, device=device).repeat_interleave(n_views - 1)
    others = torch.remainder(views + 1 + torch.arange(n_views - 1, device=device).repeat(n_views), n_views)
    images = torch.arange(batch, device=device)
    query_rows = (views[:, None] * batch + images).reshape(-1)
    key_views = others[:, None].expand(-1, batch).reshape(-1)
    return query_rows, key_views


def queue_columns(queue: torch.Tensor) -> torch.Tensor:
    """The kernel's columns: [0, ..., 0, 1] (every row's positive) over [queue_j, 0], (1 + K, D + 1)."""
    positive = F.one_hot(torch.tensor([queue.shape[1]], device=queue.device), queue.shape[1] + 1).to(queue.dtype)
    return torch.cat([positive, F.pad(queue, (0, 1))])


def shuffle_order(seed: int, step: int, batch: int) -> torch.Tensor:
    """The permutation of a rank's `batch` images before the key encoder at step `step`: drawn on the
    host from (seed, step) alone, so a resumed run shuffles as an uninterrupted one."""
    return torch.randperm(batch, generator=cpu_generator("moco-shuffle-bn", seed, step))


def split_bn_keys(network: nn.Module, views: list[torch.Tensor], order: torch.Tensor, splits: int) -> torch.Tensor:
    """`network`'s projections (view-major, like z) of `views`, each view's images permuted by `order` (on
    the host) and cut into `splits` equal chunks, one forward per chunk (its own BN statistics), rows put
    back; gathers only (index_select), deterministic on every device."""
    device, size = views[0].device, len(order) // splits
    back = order.argsort().to(device, non_blocking=True)     # from the host: copies, no sync
    order = order.to(device, non_blocking=True)
    parts = [view.index_select(0, order).split(size) for view in views]
    chunks = [network([part[c] for part in parts])[1].unflatten(0, (len(views), size)) for c in range(splits)]
    return torch.cat(chunks, 1).index_select(1, back).flatten(0, 1)   # (V, B, D) in `order`, put back


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, layout: TaskLayout, temperature: float,
              impl: str = "auto", operand_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q: online projections (V*B, D), k: key projections of the unmixed views (V*B, D), view-major;
    queue (K, D) unit rows. The mean InfoNCE of every query against each other view's key of its
    image, negatives the queue (module docstring); float32 (float64 kept)."""
    if q.shape != k.shape:
        raise ValueError(f"moco: queries {tuple(q.shape)} and keys {tuple(k.shape)} must have equal shapes")
    batch = layout.batch(q, "moco")
    qn = unit_rows(q)
    kn = unit_rows(k.detach()).to(qn.dtype)
    columns = narrow(queue_columns(queue.detach().to(qn.dtype)), operand_dtype)
    query_rows, key_views = pair_rows(layout.n_views, batch, q.device)
    queries = qn[query_rows]
    targets = torch.zeros(len(query_rows), dtype=torch.int64, device=q.device)

    def loss_of(images: torch.Tensor) -> torch.Tensor:
        positive = (queries * kn[key_views * batch + images[query_rows]]).sum(1, keepdim=True)
        rows = narrow(torch.cat([queries, positive], 1), operand_dtype)
        return sim_xent(rows, columns, scale=1.0 / temperature, targets=targets, impl=impl)

    return mixed_loss(loss_of, layout.row_images(batch, q.device), layout, layout.n_supp * batch)


@register("moco")
class MoCoHead(Method):
    """MoCo v2's key encoder (EMA of encoder + projector), queue and InfoNCE loss (module docstring).

    The head has no trained parameters of its own; its state is the key encoder (given when built from
    a run), the queue and its pointer. Shuffling BN draws each step's permutation from `seed` and the
    step `begin_step` gives, so it needs no state of its own. The loss runs outside autocast in fp32, the
    unit rows reaching the fused kernel as `operand_dtype`.
    """

    per_view_bn = True   # MoCo's code runs the query and key encoders once per view

    @dataclass
    class Settings:
        temperature: float = 0.2   # MoCo v2 (v1: 0.07)
        momentum: float = 0.99     # key encoder EMA momentum, constant (MoCo: 0.999 for ~1M ImageNet steps)
        queue_size: int = 4096     # negative keys K (MoCo v2: 65536 on ImageNet); >= keys enqueued per step
        shuffle_bn_splits: int = 8  # shuffling BN: key encoder BN batches per rank batch (MoCo's demo: 8); 1: off

    momentum_network = "key_encoder"
    MAX_QUEUE = 1 << 20

    def __init__(self, dim: int, queue_size: int, temperature: float = 0.2, momentum: float = 0.99,
                 online: nn.Module | None = None, impl: str = "auto", operand_dtype: torch.dtype = torch.float32,
                 compile: bool = False, shuffle_bn_splits: int = 1, seed: int = 0):
        super().__init__()
        self.temperature, self.momentum, self.impl, self.operand_dtype = temperature, momentum, impl, operand_dtype
        self.splits, self.seed, self._step = shuffle_bn_splits, seed, 0
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))
        if online is not None:
            self.key_encoder = make_target(online)
            # Plain attributes, not submodules (as BYOL's target): the online network is the trainer's.
            self.__dict__["_key_forward"] = torch.compile(self.key_encoder) if compile else self.key_encoder
            self._pairs = (list(self.key_encoder.parameters()), list(online.parameters()))
        self._step_keys: torch.Tensor | None = None   # this step's unit keys, enqueued by after_step
        self._last_keys: torch.Tensor | None = None   # the last finished step's keys, for logits

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        check_temperature("method.moco.temperature", settings.temperature)
        finite_in("method.moco.momentum", settings.momentum, 0.0, 1.0)
        views, batch = cfg.task.n_supp + cfg.task.n_query, cfg.loader.batch_size
        require(settings.queue_size >= views * batch, "method.moco.queue_size", settings.queue_size,
                f"must be >= the keys one step enqueues, (task.n_supp + task.n_query) x loader.batch_size "
                f"(global) = {views} x {batch} = {views * batch}: a step must not overwrite its own keys")
        int_in("method.moco.queue_size", settings.queue_size, 1, cls.MAX_QUEUE)
        splits, rank_batch = settings.shuffle_bn_splits, cfg.loader.batch_size // world
        require(splits == 1 or (splits > 1 and rank_batch % splits == 0 and rank_batch // splits >= 2),
                "method.moco.shuffle_bn_splits", splits,
                f"must be 1 (no shuffle) or divide each rank's batch, loader.batch_size / world = "
                f"{cfg.loader.batch_size} / {world} = {rank_batch}, into chunks of at least 2 images "
                "(each chunk is one BatchNorm batch of the key encoder)")

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> MoCoHead:
        return cls(ctx.embed_dim, settings.queue_size, settings.temperature, settings.momentum, ctx.online,
                   ctx.impl, ctx.operand_dtype, ctx.compile, settings.shuffle_bn_splits, ctx.seed)

    def begin_step(self, step: int) -> None:
        self._step = step   # this step's shuffle (targets)

    @torch.no_grad()
    def targets(self, task: TaskBatch) -> torch.Tensor:
        """The key encoder's projections of the views before query mixing (view-major, like z), through
        shuffled split BN when shuffle_bn_splits > 1 (module docstring)."""
        views = task.clean_views
        if self.splits == 1:
            return self._key_forward(views)[1]
        order = shuffle_order(self.seed, self._step, views[0].shape[0])
        return split_bn_keys(self._key_forward, views, order, self.splits)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        """z: online projections, targets: the key encoder's projections of the same (unmixed) rows, both
        of the global task (V*B, D). Remembers the keys for after_step's enqueue; the queue is unchanged."""
        if targets is None:
            raise ValueError("moco: the loss needs the key encoder's projections (targets)")
        loss = moco_loss(z, targets, self.queue, layout, self.temperature, self.impl, self.operand_dtype)
        self._step_keys = unit_rows(targets.detach()).to(self.queue.dtype)
        return loss

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """keys (n, D), n <= K, into the ring buffer in order: slots ptr .. ptr + n - 1 (mod K), the
        oldest keys; on the device, without reading the pointer on the host."""
        size = self.queue.shape[0]
        if keys.shape[0] > size or keys.shape[1:] != self.queue.shape[1:]:
            raise ValueError(f"moco: {tuple(keys.shape)} keys do not fit a queue of {tuple(self.queue.shape)}")
        slots = torch.remainder(self.queue_ptr + torch.arange(keys.shape[0], device=keys.device), size)
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_(torch.remainder(self.queue_ptr + keys.shape[0], size))

    def after_step(self, step: int) -> None:
        """The key encoder follows the online network; then this step's keys join the queue (once)."""
        if hasattr(self, "_pairs"):
            ema_update_(*self._pairs, self.momentum)
        if self._step_keys is not None:
            self.enqueue(self._step_keys)
            self._last_keys, self._step_keys = self._step_keys, None

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits | None:
        """Every query against the last step's keys, its own view's key excluded (the same crop through
        the EMA network): right when the best key is another view of its image."""
        keys = self._last_keys
        if keys is None or keys.shape != z.shape:
            return None
        batch = layout.batch(z, "moco")
        queries = unit_rows(z)
        logits = (queries @ keys.to(queries.dtype).mT / self.temperature).fill_diagonal_(float("-inf"))
        images = layout.row_images(batch, z.device)
        return TaskLogits(logits, images, images)
