"""Data-parallel training under torchrun, where the task is the global batch.

Every rank loads its shard of the global batch (B / W images, all their views) and embeds it; the
embeddings of all ranks are gathered, with gradient, into the global task, whose rows are view-major
over the global batch (image w * b + i is rank w's image i). Each rank computes only its share of the
head's loss (Method.rank_loss, task/layout.py RankRows): the terms of its own rows (queries) against
every rank's rows as columns, summed over the global term count, so the ranks' shares sum to the
global loss L; a method that cannot split computes the whole L on every rank and takes L / W.
Each rank backpropagates W x its share. The gather's backward (a reduce-scatter) sums, for each rank's
rows, what every rank's share sent them: W dL/dz for its rows; DDP's average of the encoder's
gradients divides by W again, so the update is the gradient of the global loss. The heads' and
auxiliary losses' own parameters, outside DDP, get W x their share's gradient on each rank:
`average_grads` averages them (one all-reduce) where the loss was split; without a split they are
the same on every rank. The ranks' shares (method and auxiliary terms together, a few scalars) are
summed by one all-reduce per step, which puts no host sync in the step: every rank logs and guards
the same global loss, so their non-finite verdicts and checkpoints agree.
BatchNorm statistics stay per rank by default, as in SimCLR's per-device BN; `model.sync_bn: true`
computes them over the global batch (SimCLR's global BN) with torch's SyncBatchNorm, which runs on
CUDA only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

from fastssl.config import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_rows(self, z: torch.Tensor, n_views: int) -> torch.Tensor:
        """Local view-major rows (V*b, D) -> the global task's view-major rows (V*W*b, D), with gradient."""
        if self.world == 1:
            return z
        parts = torch.stack(all_gather_with_grad(z.contiguous()))             # (W, V*b, D)
        return parts.view(self.world, n_views, -1, z.shape[1]).transpose(0, 1).reshape(-1, z.shape[1])

    def gather_shards(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of the shards `rank::world` of one split (uneven lengths) -> all rows in the split's order."""
        if self.world == 1:
            return x
        lengths = [torch.empty((), dtype=torch.int64, device=x.device) for _ in range(self.world)]
        dist.all_gather(lengths, torch.tensor(len(x), device=x.device))
        longest = int(max(lengths))
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        out = torch.empty((int(sum(lengths)), *x.shape[1:]), dtype=x.dtype, device=x.device)
        for rank, (part, n) in enumerate(zip(parts, lengths)):
            out[rank::self.world] = part[:int(n)]
        return out

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the ranks (a copy; x itself on one process)."""
        if self.world == 1:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x

    def average_grads(self, params: list[torch.Tensor]) -> None:
        """Every parameter's gradient replaced by its mean over the ranks, in one all-reduce (a missing
        gradient counts as zeros and is set): the heads' parameters, whose losses were split by rows."""
        if self.world == 1 or not params:
            return
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for p, mean in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = mean.view_as(p).clone() if p.grad is None else p.grad.copy_(mean.view_as(p))

    def share_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: they are per rank in training,
        and an evaluation split over the ranks must see one model."""
        if self.world == 1:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)

    def share(self, value):
        """Rank 0's picklable `value` on every rank (the run folder it claimed, or its error)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def gather_objects(self, value) -> list:
        """Every rank's picklable `value`, in rank order (what each rank found, to compare)."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait until every rank is here (the others, until rank 0 has written a checkpoint)."""
        if self.world > 1:
            dist.barrier()

    def gather_images(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image values (b, ...) of every rank -> (W*b, ...), no gradient (task rotations)."""
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm computing its statistics over all ranks (model.sync_bn)."""
    if device.type != "cuda":
        raise ConfigError(f"model.sync_bn=true: torch's SyncBatchNorm runs on CUDA only, and this run is on "
                          f"{device.type}: set model.sync_bn=false")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """The process group from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), and this rank's
    device (its own GPU); a single process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        if restarts:
            dist.init_process_group(backend, store=_attempt_store(rank, world, restarts), rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
    return Dist(rank, world, local_rank), device


def _attempt_store(rank: int, world: int, restarts: int) -> dist.Store:
    """The rendezvous store of a torchrun restart, its keys under the attempt's own prefix.

    torchrun's agent serves its workers one store for the whole job (TORCHELASTIC_USE_AGENT_STORE), and
    the process group's keys carry no attempt: the restarted workers read the dead workers' addresses
    and gloo's full-mesh connect retried closed ports until it failed or hung (torch 2.14, about one
    restart in three in tests/engine/test_torchrun.py).
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=default_pg_timeout)
    return dist.PrefixStore(f"fastssl/attempt_{restarts}", store)
