"""Weighted kNN monitor (Wu et al. 2018): how linearly-free the frozen features already are.

Train-split features are the memory bank, held-out images vote with weights exp(cos / T) over their
k nearest neighbours. Runs on the training device, in chunks, without gradients.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from fastssl.engine.distributed import Dist


def batch_features(encoder: nn.Module, batches, autocast_ctx, normalize: bool = True
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float32 features h = encoder(x) of each batch, L2-normalised unless `normalize` is off (linear
    evaluation standardises raw features), with its labels: batch by batch, for callers that stream
    them out (a features file) instead of holding every one."""
    was_training = encoder.training
    encoder.eval()
    try:
        for images, y in batches:
            with torch.no_grad(), autocast_ctx():
                h = encoder(images).float()
            yield (nn.functional.normalize(h, dim=1) if normalize else h), y
    finally:
        encoder.train(was_training)


def extract_features(encoder: nn.Module, batches, autocast_ctx,
                     normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's features and label, as two tensors on the batches' device."""
    feats, labels = zip(*batch_features(encoder, batches, autocast_ctx, normalize))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int, temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Predicted class of each query: argmax over classes of sum_{top-k} exp(cos / T), computed as
    exp((cos - max cos) / T) so that small temperatures do not overflow."""
    k = min(k, bank.shape[0])
    predictions = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        # exp(cos / T) overflows float32 once cos / T > 88 (T < 0.011 at cos 1): every vote would be inf.
        # Shifting by the row's largest cos (column 0, topk sorts) scales a query's votes alike: same argmax.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_top1(encoder: nn.Module, train_batches, test_batches, num_classes: int, k: int,
             temperature: float, autocast_ctx, dist: Dist = Dist()) -> float:
    """Top-1 of the weighted kNN. Under torchrun every rank holds the shards `rank::world` of both splits
    (loaders.datasets.Shard): the bank is gathered back into the split's order, each rank classifies its
    own test images, and the counts are summed, so the work is split and the score is one process's."""
    bank, bank_labels = extract_features(encoder, train_batches, autocast_ctx)
    queries, labels = extract_features(encoder, test_batches, autocast_ctx)
    bank, bank_labels = dist.gather_shards(bank), dist.gather_shards(bank_labels)
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    counts = dist.sum(torch.stack([(predicted == labels).sum(), torch.tensor(len(labels), device=labels.device)]))
    return float(counts[0] / counts[1])
