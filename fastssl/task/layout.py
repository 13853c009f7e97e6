"""The task every head is given: each image is a class, its first n_supp views are
the support set and the next n_query views the queries, rows view-major (row r is image r mod B).

Query mixing (CutMix / Mixup between the query views of different images) is part of the task: a
mixed query of image i holds a fraction lam of image i and 1 - lam of image partner[i], and every
head's loss becomes lam * L(i) + (1 - lam) * L(partner[i]) (`mixed_loss`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from fastssl.kernels import unit_rows


@dataclass(frozen=True)
class QueryMix:
    """One batch's query mixing: partner (B,) int64, the image mixed into each image's query views; lam,
    the share of the image itself; box (y0, y1, x0, x1), CutMix's pasted region, or None for Mixup."""

    partner: torch.Tensor
    lam: float
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class TaskLayout:
    """How the rows of a task's embeddings are laid out, and whether its queries were mixed."""

    n_supp: int
    n_query: int
    mix: QueryMix | None = None
    global_views: int = 0   # multi-crop: the first views, at full resolution (a teacher's); 0: all views

    @property
    def n_views(self) -> int:
        return self.n_supp + self.n_query

    @property
    def n_global(self) -> int:
        """The views a teacher network sees: the global (first crop group's) views."""
        return self.global_views or self.n_views

    def batch(self, z: torch.Tensor, head: str) -> int:
        """Images in the task of rows z, checked against the layout."""
        if self.n_supp < 1 or self.n_query < 1 or z.shape[0] % self.n_views:
            raise ValueError(f"{head}: {z.shape[0]} rows, n_supp={self.n_supp}, n_query={self.n_query}: need "
                             "n_supp >= 1, n_query >= 1 and n_supp + n_query views dividing the row count")
        return z.shape[0] // self.n_views

    def row_images(self, batch: int, device: torch.device) -> torch.Tensor:
        """The image (class) of every row, support rows first: (n_views * B,)."""
        return torch.arange(batch, device=device).repeat(self.n_views)

    def across(self, world: int, local_batch: int) -> TaskLayout:
        """The layout of the global task under torchrun, rows gathered rank after rank: every rank drew
        the same mixing (a function of seed and step), with partners among its own images, so rank w's
        image i is mixed with w * b + partner[i]."""
        if world == 1 or self.mix is None:
            return self
        offsets = torch.arange(world, device=self.mix.partner.device) * local_batch
        partner = (offsets[:, None] + self.mix.partner[None, :]).reshape(-1)
        return dataclasses.replace(self, mix=dataclasses.replace(self.mix, partner=partner))


@dataclass(frozen=True)
class RankRows:
    """The rows of the global task whose loss terms this rank computes under torchrun.

    Rank w of W holds images w*b .. (w+1)*b - 1 of the global batch (b = B / W), all their views: in the
    gathered view-major rows, rows v*B + w*b + i. A method that splits its loss by rows (Method.rank_loss)
    computes the terms of these rows only, against every rank's rows as columns; on one process
    (`whole`) they are all the rows.
    """

    rank: int = 0
    world: int = 1

    @property
    def whole(self) -> bool:
        return self.world == 1

    def images(self, batch: int) -> slice:
        """This rank's images in the global batch of `batch` images."""
        if batch % self.world:
            raise ValueError(f"rank rows: a global batch of {batch} images does not split over {self.world} ranks")
        local = batch // self.world
        return slice(self.rank * local, (self.rank + 1) * local)

    def own(self, x: torch.Tensor, n_views: int) -> torch.Tensor:
        """This rank's rows of view-major per-row values x (n_views * B, ...): (n_views * b, ...), view-major."""
        batch = x.shape[0] // n_views
        return x.unflatten(0, (n_views, batch))[:, self.images(batch)].flatten(0, 1)

    def rank_major(self, x: torch.Tensor, n_views: int) -> torch.Tensor:
        """View-major rows (n_views * B, ...) reordered rank after rank, each rank's rows view-major: this
        rank's rows become the contiguous block first_row(len(x)) .. + len(x) / world - 1."""
        batch = x.shape[0] // n_views
        self.images(batch)   # checks the split
        return x.unflatten(0, (n_views, self.world, batch // self.world)).transpose(0, 1).flatten(0, 2)

    def first_row(self, rows: int) -> int:
        """Where this rank's block starts among `rows` rank-major rows."""
        return self.rank * (rows // self.world)


def mixed_loss(loss_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, layout: TaskLayout,
               first_query: int) -> torch.Tensor:
    """loss_of(images), the loss when row r belongs to image images[r]; with query mixing
    lam * loss_of(images) + (1 - lam) * loss_of(images with rows >= first_query moved to their partner).

    Exact for any loss that is a mean of per-row terms linear in the row's one-hot target (cross-entropy
    against a soft target lam * e_i + (1 - lam) * e_partner[i] is such a sum).
    """
    if layout.mix is None:
        return loss_of(images)
    swapped = torch.cat([images[:first_query], layout.mix.partner[images[first_query:]]])
    return layout.mix.lam * loss_of(images) + (1 - layout.mix.lam) * loss_of(swapped)


@dataclass(frozen=True)
class TaskLogits:
    """A head's logits for monitoring: row r scores the columns, and is right when its best column's class
    is its own. The loss path never builds them (the fused kernels stream them); this is the explicit
    (rows x columns) matrix, computed without gradient at log steps only."""

    logits: torch.Tensor          # (R, C)
    row_classes: torch.Tensor     # (R,)
    column_classes: torch.Tensor  # (C,)

    def top1(self) -> torch.Tensor:
        """Share of rows whose best column is of their class, a 0-d tensor on the logits' device (no sync)."""
        best = self.column_classes[self.logits.argmax(dim=1)]
        return (best == self.row_classes).float().mean()


@dataclass
class Task:
    """support: (n_supp, B, D) unit rows, view-major; queries: (n_query * B, D); targets: the image of each query."""

    support: torch.Tensor
    queries: torch.Tensor
    targets: torch.Tensor

    @property
    def classes(self) -> int:
        return self.support.shape[1]


def split_views(z: torch.Tensor, layout: TaskLayout, head: str) -> Task:
    """Unit-normalised rows of z (V*B, D) split into support and queries."""
    batch = layout.batch(z, head)
    views = unit_rows(z).reshape(layout.n_views, batch, z.shape[1])
    targets = torch.arange(batch, device=z.device).repeat(layout.n_query)
    return Task(views[:layout.n_supp], views[layout.n_supp:].reshape(-1, z.shape[1]), targets)
