"""Linear protocol: L-BFGS logistic regression against an independent float64 gradient-descent fit."""
import numpy as np
import pytest
import torch

from fastssl.evaluation.linear import Settings, fit_logistic, linear_eval, predict, stratified_split


def reference_fit(x, y, num_classes, wd, iters=20000):
    """Plain gradient descent in numpy on mean cross-entropy + wd/2 ||W||^2 (no bias decay)."""
    n, d = x.shape
    w, b = np.zeros((d, num_classes)), np.zeros(num_classes)
    onehot = np.eye(num_classes)[y]
    step = 1.0 / (0.5 * np.linalg.norm(x, 2) ** 2 / n + 0.5 + wd)   # 1 / Lipschitz bound
    for _ in range(iters):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        w -= step * (x.T @ g + wd * w)
        b -= step * g.sum(0)
    return w, b


def test_fit_matches_an_independent_gradient_descent_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = rng.integers(0, 3, size=40)
    for wd in (0.1, 0.01):
        w_ref, b_ref = reference_fit(x, y, 3, wd)
        w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, wd, max_iter=500)
        # The bias is defined up to a constant shift (softmax); W is unique (strictly convex in W).
        np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-5)
        np.testing.assert_allclose(b.numpy() - b.numpy().mean(), b_ref - b_ref.mean(), atol=1e-5)


def test_separable_data_reaches_100_percent():
    generator = torch.Generator().manual_seed(1)
    centres = torch.eye(4, 16) * 6
    labels = torch.arange(200) % 4
    x = centres[labels] + torch.randn(200, 16, generator=generator)
    w, b = fit_logistic(x, labels, 4, 1e-4)
    assert torch.equal(predict(w, b, x), labels)
    test_labels = torch.arange(80) % 4
    test_x = centres[test_labels] + torch.randn(80, 16, generator=generator)
    results = linear_eval(x, labels, test_x, test_labels, 4, Settings(lrs=(1.0,), weight_decays=(1e-4, 1e-2)),
                          progress=lambda line: None)
    assert results["top1"] == 1.0 and results["best_val_top1"] == 1.0
    assert results["num_fit"] + results["num_val"] == 200


def test_grid_choice_is_the_best_validation_cell():
    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(300) % 3
    x = torch.randn(300, 8, generator=generator) + 0.5 * torch.nn.functional.one_hot(labels, 8)
    lines = []
    results = linear_eval(x, labels, x[:30], labels[:30], 3,
                          Settings(lrs=(1.0, 0.1), weight_decays=(1e-6, 1e-1, 10.0)), progress=lines.append)
    assert len(results["grid"]) == 6 and len(lines) == 6
    best = max(results["grid"], key=lambda g: g["val_top1"])
    assert results["best_val_top1"] == best["val_top1"]
    first_best = next(g for g in results["grid"] if g["val_top1"] == best["val_top1"])
    assert (results["best_lr"], results["best_weight_decay"]) == (first_best["lr"], first_best["weight_decay"])
    assert 0.0 <= results["top1"] <= 1.0


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(fit.tolist() + val.tolist()) == list(range(16))
    assert [int((labels[val] == c).sum()) for c in range(3)] == [2, 1, 0]
    again = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(again[1], val)
    assert any(not torch.equal(stratified_split(labels, 0.2, seed=s)[1], val) for s in range(4, 10))
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)
