"""The weighted kNN monitor against a brute-force per-query loop."""
import math

import torch

from fastssl.engine.knn import knn_predict


def brute_force(bank, bank_labels, queries, num_classes, k, t):
    predictions = []
    for q in queries.tolist():
        sims = [(sum(a * b for a, b in zip(q, row)), int(label)) for row, label in zip(bank.tolist(), bank_labels)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / t)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return predictions


def test_knn_predict_equals_brute_force_with_chunking():
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 8, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (50,))
    queries = torch.nn.functional.normalize(torch.randn(23, 8, dtype=torch.float64), dim=1)
    for k, t in [(1, 0.1), (7, 0.1), (200, 0.5)]:
        got = knn_predict(bank, labels, queries, 4, k, t, chunk=5)
        votes_dtype_ok = got.dtype == torch.int64
        assert votes_dtype_ok and got.tolist() == brute_force(bank, labels, queries, 4, min(k, 50), t)


def test_k1_on_the_bank_itself_is_perfect():
    bank = torch.nn.functional.normalize(torch.randn(30, 5), dim=1)
    labels = torch.arange(30) % 3
    assert torch.equal(knn_predict(bank, labels, bank, 3, 1, 0.1), labels)
