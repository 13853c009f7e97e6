"""kNN votes at small temperatures: exp(cos / T) overflows float32 below T of about 0.011, where every
class would get an infinite vote and argmax would answer class 0 for every query."""
import numpy as np
import pytest
import torch

from fastssl.engine.knn import knn_predict
from fastssl.evaluation.knn import knn_accuracy

T = 0.005


def reference(bank, bank_labels, queries, num_classes, k, t) -> list[int]:
    """Weighted kNN in float64 without any shift: the k most similar bank rows vote exp(sim / T) for their
    class (exp(1 / 0.005) = 7e86 is finite in float64)."""
    sims = queries.double().numpy() @ bank.double().numpy().T
    labels = bank_labels.numpy()
    predictions = []
    for row in sims:
        nearest = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, labels[nearest], np.exp(row[nearest] / t))
        predictions.append(int(votes.argmax()))
    return predictions


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def test_small_temperature_matches_float64_on_clusters():
    gen = torch.Generator().manual_seed(0)
    centers = unit(torch.randn(4, 16, generator=gen))
    bank_labels = torch.arange(60) % 4
    bank = unit(centers[bank_labels] + 0.4 * torch.randn(60, 16, generator=gen))
    query_labels = 1 + torch.arange(27) % 3          # classes 1..3 only: class 0 is never right
    queries = unit(centers[query_labels] + 0.4 * torch.randn(27, 16, generator=gen))
    expected = reference(bank, bank_labels, queries, 4, 20, T)
    assert sum(p != 0 for p in expected) >= 20       # the data decides the answer, not the tie-break

    assert knn_predict(bank, bank_labels, queries, 4, 20, T, chunk=8).tolist() == expected
    right = np.mean(np.array(expected) == query_labels.numpy())
    assert knn_accuracy(bank, bank_labels, queries, query_labels, 4, 20, T) == pytest.approx(right)


def test_small_temperature_sums_votes_rather_than_taking_the_nearest():
    # Query along e0. Class 2: one neighbour at cos 1; class 1: three at cos 0.998, each weighing
    # exp(-0.002 / T) = 0.67 of it, 2.0 together; class 0: two at cos 0.5, weights about e^-100.
    cos = torch.tensor([1.0, 0.998, 0.998, 0.998, 0.5, 0.5])
    sin = (1 - cos**2).sqrt()
    bank = torch.zeros(6, 3)
    bank[:, 0] = cos
    bank[[1, 4], 1], bank[[2, 5], 2] = sin[[1, 4]], sin[[2, 5]]
    bank[3, 1] = bank[3, 2] = -sin[3] / 2**0.5
    bank_labels = torch.tensor([2, 1, 1, 1, 0, 0])
    queries = torch.tensor([[1.0, 0.0, 0.0]])
    assert reference(bank, bank_labels, queries, 3, 6, T) == [1]
    assert knn_predict(bank, bank_labels, queries, 3, 6, T).tolist() == [1]
