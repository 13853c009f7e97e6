"""kNN protocol against a brute-force loop; the class-balanced label subsets of the semi protocol;
protocol options."""
import math

import numpy as np
import pytest
import torch

from fastssl.config import ConfigError
from fastssl.evaluation import settings_for
from fastssl.evaluation.knn import knn_accuracy
from fastssl.evaluation.semi import balanced_subset


def test_knn_accuracy_equals_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(40, 6, generator=generator), torch.randn(15, 6, generator=generator)
    train_y, test_y = torch.randint(0, 3, (40,), generator=generator), torch.randint(0, 3, (15,), generator=generator)
    for k, t in [(1, 0.1), (5, 0.07), (100, 1.0)]:
        hits = 0
        for q, label in zip(test_x.tolist(), test_y.tolist()):
            qn = math.sqrt(sum(v * v for v in q))
            sims = []
            for row, c in zip(train_x.tolist(), train_y.tolist()):
                rn = math.sqrt(sum(v * v for v in row))
                sims.append((sum(a * b for a, b in zip(q, row)) / (qn * rn), c))
            sims.sort(key=lambda s: -s[0])
            votes = [0.0] * 3
            for sim, c in sims[:k]:
                votes[c] += math.exp(sim / t)
            hits += max(range(3), key=lambda c: votes[c]) == label
        assert knn_accuracy(train_x, train_y, test_x, test_y, 3, k, t) == pytest.approx(hits / 15)


def test_balanced_subsets_take_the_fraction_of_every_class():
    labels = np.repeat(np.arange(4), [100, 50, 30, 7])
    for fraction, counts in [(0.01, [1, 1, 1, 1]), (0.1, [10, 5, 3, 1]), (1.0, [100, 50, 30, 7])]:
        chosen = balanced_subset(labels, fraction, seed=0)
        assert len(set(chosen.tolist())) == len(chosen) and (np.diff(chosen) > 0).all()
        assert np.bincount(labels[chosen], minlength=4).tolist() == counts
    assert np.array_equal(balanced_subset(labels, 0.1, 5), balanced_subset(labels, 0.1, 5))
    assert not np.array_equal(balanced_subset(labels, 0.1, 5), balanced_subset(labels, 0.1, 6))
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset(labels, 0.0, seed=0)


def test_protocol_options_are_typed_and_checked():
    s = settings_for("fewshot", ["episodes=1000", "shots=[1, 5, 10]", "ridge_lambda=2"])
    assert (s.episodes, s.shots, s.ridge_lambda, s.ways) == (1000, (1, 5, 10), 2.0, 5)
    assert settings_for("linear", ["weight_decays=1e-3"]).weight_decays == (1e-3,)
    with pytest.raises(ConfigError, match="fewshot.episode.*known in fewshot: ways, shots"):
        settings_for("fewshot", ["episode=3"])
    with pytest.raises(ConfigError, match="semi.epochs=.two.: must be an integer"):
        settings_for("semi", ["epochs=two"])
    with pytest.raises(ConfigError, match=r"oneshot.metric='manhattan': must be one of cosine, euclidean"):
        settings_for("oneshot", ["runs=x", "metric=manhattan"])
    with pytest.raises(ConfigError, match=r"fewshot.shots\[1\]=2.5: must be an integer"):
        settings_for("fewshot", ["shots=[1, 2.5]"])
    with pytest.raises(ConfigError, match="--protocol 'svm'"):
        settings_for("svm")
