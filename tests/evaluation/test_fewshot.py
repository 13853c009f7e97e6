"""Few-shot protocol: episode sampling exactly, both classifiers against explicit loops, the interval."""
import numpy as np
import pytest
import torch

from fastssl.evaluation.fewshot import (Settings, confidence, episode_accuracies, fewshot_eval, prototype_predict,
                                        ridge_predict, sample_episodes)

LABELS = np.repeat(np.arange(8), 12)   # 8 classes of 12
LABELS = np.concatenate([LABELS, [8] * 5])   # a 9th class too small for 5 + 6 samples


def test_episodes_draw_distinct_classes_and_distinct_samples():
    support, query = sample_episodes(LABELS, ways=5, shots=5, queries=6, episodes=50, seed=7)
    assert support.shape == (50, 5, 5) and query.shape == (50, 5, 6)
    for s, q in zip(support, query):
        classes = [int(LABELS[row[0]]) for row in s]
        assert len(set(classes)) == 5 and 8 not in classes
        for c, srow, qrow in zip(classes, s, q):
            both = np.concatenate([srow, qrow])
            assert len(set(both.tolist())) == 11
            assert (LABELS[both] == c).all()
    again = sample_episodes(LABELS, 5, 5, 6, 50, seed=7)
    assert np.array_equal(again[0], support) and np.array_equal(again[1], query)
    assert not np.array_equal(sample_episodes(LABELS, 5, 5, 6, 50, seed=8)[0], support)


def test_too_few_classes_is_an_error_naming_the_need():
    with pytest.raises(ValueError, match="needs 9 classes of at least 11"):
        sample_episodes(LABELS, ways=9, shots=5, queries=6, episodes=1, seed=0)


def test_prototype_classifier_equals_explicit_class_means():
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(3, 4, 2, 6, generator=generator, dtype=torch.float64)
    query = torch.randn(3, 10, 6, generator=generator, dtype=torch.float64)
    got = prototype_predict(support, query)
    for e in range(3):
        means = [sum(support[e, c, k] for k in range(2)) / 2 for c in range(4)]
        for m in range(10):
            dists = [float(((query[e, m] - mean) ** 2).sum()) for mean in means]
            assert int(got[e, m]) == int(np.argmin(dists))


def test_ridge_classifier_equals_an_explicit_solve():
    generator = torch.Generator().manual_seed(1)
    support = torch.randn(4, 3, 2, 5, generator=generator)
    query = torch.randn(4, 7, 5, generator=generator)
    got = ridge_predict(support, query, lam=0.5)
    for e in range(4):
        x = support[e].reshape(6, 5).double().numpy()
        y = np.repeat(np.eye(3), 2, axis=0)
        w = np.linalg.solve(x.T @ x + 0.5 * np.eye(5), x.T @ y)
        assert got[e].tolist() == (query[e].double().numpy() @ w).argmax(1).tolist()


def test_confidence_interval_is_196_std_over_sqrt_n():
    accs = np.array([1.0, 0.5, 0.75, 0.25, 0.6])
    mean, ci = confidence(accs)
    assert mean == pytest.approx(0.62)
    assert ci == pytest.approx(1.96 * np.std(accs) / np.sqrt(5))
    assert confidence(np.full(600, 0.8)) == (pytest.approx(0.8), pytest.approx(0.0))


def test_accuracies_on_clustered_and_on_shuffled_features():
    generator = torch.Generator().manual_seed(2)
    labels = torch.from_numpy(LABELS)
    clustered = torch.eye(9, 16)[labels] * 5 + 0.1 * torch.randn(len(labels), 16, generator=generator)
    support, query = sample_episodes(LABELS, 5, 1, 6, 30, seed=0)
    accs = episode_accuracies(clustered, support, query, lam=1.0, chunk=7)
    assert accs["prototype"].shape == (30,) and (accs["prototype"] == 1).all() and (accs["ridge"] == 1).all()
    # Per-episode accuracy by hand for the prototype classifier on noise features.
    noise = torch.randn(len(labels), 16, generator=generator)
    accs = episode_accuracies(noise, support, query, lam=1.0)
    unit = torch.nn.functional.normalize(noise, dim=1).numpy()
    for e in range(30):
        protos = unit[support[e, :, 0]]
        hits = [int(np.argmin(((unit[q] - protos) ** 2).sum(1)) == c) for c in range(5) for q in query[e, c]]
        assert accs["prototype"][e] == pytest.approx(np.mean(hits))
    results = fewshot_eval(noise, labels, Settings(shots=(1, 2), queries=6, episodes=30), progress=lambda s: None)
    assert set(results) == {"5way_1shot", "5way_2shot"}
    assert results["5way_1shot"]["prototype"]["mean"] == pytest.approx(accs["prototype"].mean())
