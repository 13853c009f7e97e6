"""The svm head (MetaOptNet's Crammer-Singer SVM): its QP solver against the KKT conditions and an
independent float64 solver, its loss against an explicit computation, its gradient against finite
differences, the task split and the multi-shot bookkeeping, its config rules, and a short training run."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fastssl.config import ConfigError, load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl.methods import MethodContext, build_method, check
from fastssl.task.layout import TaskLayout, split_views
from fastssl.methods.svm import SVMHead, lambda_max_bound, project_rows, split_tasks, svm_dual

RIDGE = 1.0   # MetaOptNet's `+ 1.0 * I` on the kernel, the head's default
TOL_KKT = 1e-9
TOL_REF = 1e-9


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _project_simplex_breakpoints(v: np.ndarray, c: float) -> np.ndarray:
    """Projection of v onto {beta >= 0, sum beta = c}, independently of the sort/cumsum formula: the
    threshold solves sum max(v - theta, 0) = c, a piecewise-linear decreasing function of theta with
    breaks at the v_j; find the segment holding c among the breaks and solve the linear piece."""
    s = lambda th: np.maximum(v - th, 0).sum()  # noqa: E731
    breaks = np.sort(np.concatenate([v, [v.min() - c]]))
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        if s(lo) >= c >= s(hi):
            active = v > (lo + hi) / 2 if hi > lo else v >= hi
            theta = (v[active].sum() - c) / active.sum()
            return np.maximum(v - theta, 0)
    raise AssertionError("no segment holds c")


def _reference_alpha(x: np.ndarray, b: int, c: float, sweeps: int = 3000) -> np.ndarray:
    """Gauss-Seidel block coordinate descent on the dual in float64 (a different algorithm from the
    head's accelerated projected gradient): row i's block of the Hessian is (K_ii + ridge) I, so the
    exact minimiser over alpha_i given the other rows is the projection of alpha_i - grad_i / (K_ii + ridge)."""
    n = x.shape[0]
    k = x @ x.T
    y = np.tile(np.eye(b), (n // b, 1))
    alpha = np.zeros((n, b))
    for _ in range(sweeps):
        before = alpha.copy()
        for i in range(n):
            grad = k[i] @ alpha + RIDGE * alpha[i] - y[i]
            target = alpha[i] - grad / (k[i, i] + RIDGE)
            alpha[i] = c * y[i] - _project_simplex_breakpoints(c * y[i] - target, c)
        if np.abs(alpha - before).max() < 1e-16:
            break
    return alpha


def _kkt_residuals(x: np.ndarray, alpha: np.ndarray, b: int, c: float) -> dict:
    """The KKT conditions of min 1/2 tr(a^T (K + rI) a) - tr(Y^T a) s.t. a <= C Y, a 1 = 0, with
    multipliers nu_i (equality) and eta_im >= 0 (bounds): G + nu 1^T + eta = 0, eta * (C Y - a) = 0.
    nu_i is read from the free entries (slack > 1e-7 C, at least one per row since a row sums to 0 < C)."""
    n = x.shape[0]
    y = np.tile(np.eye(b), (n // b, 1))
    grad = (x @ x.T + RIDGE * np.eye(n)) @ alpha - y
    slack = c * y - alpha
    free = slack > 1e-7 * c
    assert free.any(axis=1).all()
    nu = -np.array([grad[i, free[i]].mean() for i in range(n)])
    eta = -grad - nu[:, None]
    return {"primal_bound": max(0.0, -slack.min()), "primal_sum": np.abs(alpha.sum(axis=1)).max(),
            "stationarity_free": np.abs(eta[free]).max(), "dual_feasibility": max(0.0, -eta.min()),
            "complementary_slackness": np.abs(eta * slack).max(), "n_active": int((~free).sum())}


def _explicit_loss(z: np.ndarray, n_views: int, n_supp: int, tasks: int, c: float, scale: float) -> float:
    """The head's loss in float64 with loops: per task, alpha from the reference solver, each query's
    logits scale * sum_i alpha_im (q . x_i), cross-entropy against its image, mean over all queries."""
    z = _unit(z)
    batch = z.shape[0] // n_views
    b = batch // tasks
    losses = []
    for t in range(tasks):
        imgs = range(t * b, (t + 1) * b)
        x = np.stack([z[v * batch + j] for v in range(n_supp) for j in imgs])
        alpha = _reference_alpha(x, b, c)
        for v in range(n_supp, n_views):
            for cls, j in enumerate(imgs):
                q = z[v * batch + j]
                logits = [scale * sum(alpha[i, m] * (q @ x[i]) for i in range(len(x))) for m in range(b)]
                losses.append(-(logits[cls] - math.log(sum(math.exp(v_) for v_ in logits))))
    return float(np.mean(losses))


def test_lambda_max_bound_is_an_upper_bound_within_its_stated_factor():
    torch.manual_seed(0)
    for n, d in [(12, 5), (5, 12), (64, 16)]:
        x = F.normalize(torch.randn(3, n, d, dtype=torch.float64), dim=-1)
        top = torch.linalg.eigvalsh(x @ x.mT)[:, -1]
        bound = lambda_max_bound(x)
        assert (bound >= top * (1 - 1e-12)).all()
        assert (bound <= top * min(n, d) ** (1 / 32) * (1 + 1e-12)).all()


def test_projection_matches_independent_simplex_projection():
    torch.manual_seed(1)
    b, c = 6, 0.3
    alpha = torch.randn(50, b, dtype=torch.float64)
    onehot = F.one_hot(torch.arange(50) % b, b).double()
    out = project_rows(alpha, c * onehot, c)
    assert (out <= c * onehot + 1e-15).all() and out.sum(-1).abs().max() < 1e-14
    for row, a, y in zip(out.numpy(), alpha.numpy(), onehot.numpy()):
        np.testing.assert_allclose(row, c * y - _project_simplex_breakpoints(c * y - a, c), atol=1e-14)


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_solver_meets_kkt_and_matches_an_independent_solver(c):
    """float64, 3 tasks of 4 classes x 2 shots in 5 dims: after 400 iterations (linear rate
    1 - sqrt(ridge / L), L <= 9 here) every KKT residual is < 1e-9 and alpha equals the block coordinate
    descent reference to 1e-9; with 3 iterations it does not (the check has teeth)."""
    torch.manual_seed(2)
    b, n_supp, d = 4, 2, 5
    x = F.normalize(torch.randn(3, n_supp * b, d, dtype=torch.float64), dim=-1)
    alpha = svm_dual(x, c, 400, RIDGE, n_classes=b)
    rough = svm_dual(x, c, 3, RIDGE, n_classes=b)
    actives = 0
    for t in range(3):
        res = _kkt_residuals(x[t].numpy(), alpha[t].numpy(), b, c)
        actives += res.pop("n_active")
        assert max(res.values()) < TOL_KKT, res
        ref = _reference_alpha(x[t].numpy(), b, c)
        assert np.abs(alpha[t].numpy() - ref).max() < TOL_REF
        assert np.abs(rough[t].numpy() - ref).max() > 1e-4
    assert 0 < actives < 3 * n_supp * b * b   # both active and free bounds occur: a non-trivial QP


def test_head_loss_equals_explicit_float64_computation():
    torch.manual_seed(3)
    n_views, n_supp, batch, tasks, c = 3, 2, 6, 2, 0.5
    z = torch.randn(n_views * batch, 4, dtype=torch.float64)
    head = SVMHead(temperature=0.25, c=c, iters=400, tasks=tasks).double()
    loss = head(z, TaskLayout(n_supp, n_views - n_supp))
    assert loss.dtype == torch.float64
    expected = _explicit_loss(z.numpy(), n_views, n_supp, tasks, c, scale=4.0)
    assert abs(loss.item() - expected) < 1e-9


def test_gradients_match_finite_differences():
    """The unrolled solver's gradient w.r.t. z and the scale equals central differences (gradcheck),
    with few iterations (not converged: it is the gradient of what is computed) and many."""
    torch.manual_seed(4)
    for iters in (6, 60):
        z = torch.randn(3 * 4, 3, dtype=torch.float64, requires_grad=True)
        scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        head = SVMHead(temperature=0.5, c=0.3, iters=iters, tasks=2)
        loss = lambda z_, s_: torch.func.functional_call(head, {"scale": s_}, (z_, TaskLayout(2, 1)))  # noqa: E731
        assert torch.autograd.gradcheck(loss, (z, scale), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_tasks_equal_separate_heads_averaged():
    """svm_tasks=3 on a batch of 12 images == the mean of three svm_tasks=1 losses on the sub-batches of
    4 consecutive images (every view's rows of those images); gradients agree too."""
    torch.manual_seed(5)
    n_views, batch, tasks = 3, 12, 3
    z = torch.randn(n_views * batch, 8, dtype=torch.float64, requires_grad=True)
    split = SVMHead(0.2, c=0.1, iters=30, tasks=tasks).double()
    single = SVMHead(0.2, c=0.1, iters=30, tasks=1).double()
    layout = TaskLayout(1, n_views - 1)
    loss = split(z, layout)
    (grad,) = torch.autograd.grad(loss, z)
    b = batch // tasks
    rows = [torch.tensor([v * batch + t * b + j for v in range(n_views) for j in range(b)]) for t in range(tasks)]
    separate = torch.stack([single(z[r], layout) for r in rows]).mean()
    (grad_sep,) = torch.autograd.grad(separate, z)
    assert abs(loss.item() - separate.item()) < 1e-12
    assert torch.allclose(grad, grad_sep, atol=1e-12)
    # and a split changes the problem: one 12-class task is not three 4-class ones
    assert abs(single(z, layout).item() - loss.item()) > 1e-3


def test_multishot_bookkeeping_two_supports_three_views():
    """3 views, n_supp 2, 6 images, 2 tasks: exact rows of support and queries, their classes and targets."""
    n_views, n_supp, batch, tasks, b = 3, 2, 6, 2, 3
    z = torch.zeros(n_views * batch, n_views * batch, dtype=torch.float64)
    z[torch.arange(n_views * batch), torch.arange(n_views * batch)] = 2.0   # row r -> unit vector e_r
    support, queries, images = split_tasks(split_views(z, TaskLayout(n_supp, n_views - n_supp), "svm"), tasks)
    row_of = lambda v: v.argmax(-1).tolist()  # noqa: E731
    # task t, support row v*b + j = view v of image t*b + j (z row v*B + t*b + j)
    assert row_of(support) == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]
    assert row_of(queries) == [[12, 13, 14], [15, 16, 17]]
    assert images.tolist() == [[0, 1, 2], [3, 4, 5]]   # the batch image; its class in task t is image mod b
    assert torch.equal(support.abs().sum(-1), torch.ones(2, 6, dtype=torch.float64))
    # the solver's labels: support row v*b + j is class j -> alpha[., v*b + j, j] in [0, C], others <= 0
    c = 0.1
    alpha = svm_dual(support, c, 50, n_classes=b)
    own = torch.eye(b, dtype=torch.bool).repeat(n_supp, 1).expand(tasks, -1, -1)
    assert (alpha[own] > 0).all() and (alpha[own] <= c + 1e-15).all() and (alpha[~own] <= 1e-15).all()
    # 4 views, n_supp 1: 3 query views per image, targets repeat per view
    _, queries, images = split_tasks(split_views(torch.randn(4 * 6, 5), TaskLayout(1, 3), "svm"), 3)
    assert queries.shape == (3, 6, 5) and images.tolist() == [[2 * t, 2 * t + 1] * 3 for t in range(3)]


def test_head_rejects_batches_the_task_count_does_not_divide():
    head = SVMHead(0.2, tasks=4)
    with pytest.raises(ValueError, match="method.svm.tasks=4 must divide the batch of 6 images"):
        head(torch.randn(12, 8), TaskLayout(1, 1))


@pytest.mark.parametrize("overrides, message", [
    (["method.name=svm", "method.svm.c=0"], "method.svm.c=0.0: must be a finite number in [1e-06, 1000000.0]"),
    (["method.name=svm", "method.svm.c=-0.1"], "method.svm.c=-0.1: must be a finite number in [1e-06, 1000000.0]"),
    (["method.name=svm", "method.svm.c=.inf"], "method.svm.c=inf: must be a finite number in [1e-06, 1000000.0]"),
    (["method.name=svm", "method.svm.iters=0"], "method.svm.iters=0: must be >= 1"),
    (["method.name=svm", "method.svm.tasks=0"], "method.svm.tasks=0: must be >= 1"),
    (["method.name=svm", "loader.batch_size=32", "method.svm.tasks=3"],
     "method.svm.tasks=3: must divide loader.batch_size (32)"),
    (["method.name=svm", "task.n_supp=2"],
     "loader.views=2: must equal task.n_supp + task.n_query = 2 + 1"),
])
def test_config_rules(overrides, message):
    with pytest.raises(ConfigError) as err:
        check(load_config(None, overrides))
    assert str(err.value).startswith(message)


def test_config_builds_the_head():
    cfg = load_config(None, ["method.name=svm", "method.svm.c=0.5", "method.svm.iters=7", "method.svm.tasks=4",
                             "loader.batch_size=32", "loader.views=3", "task.n_supp=2", "method.svm.temperature=0.5"])
    head = build_method(cfg.method, MethodContext(16))
    assert isinstance(head, SVMHead)
    assert (head.c, head.iters, head.tasks, head.scale.item()) == (0.5, 7, 4, 2.0)
    # a batch not divisible by svm_tasks is fine for another head
    other = load_config(None, ["loader.batch_size=30", "method.svm.tasks=4"])
    check(other)
    assert other.method.svm.tasks == 4 and other.method.name == "contrastive"


def test_short_training_run_loss_finite_and_decreasing(tmp_path):
    """16 CPU steps (~20 s) of the svm head, 3 views (2 support), 2 tasks of 16 images: every loss is
    finite, the last 4 average >= 0.02 below the first 4 (measured: 0.054; step-to-step noise ~0.02),
    and the learnable scale, which the optimizer holds, has moved off 1 / temperature."""
    run = ["data.num_train=512", "data.num_test=64", "loader.batch_size=32", "train.epochs=1",
           "train.max_steps=16", "train.log_every=1", "train.deterministic=true", "train.precision=fp32",
           "train.device=cpu", "knn.k=20", "knn.every_epochs=0", "model.width=0.125",
           "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
           "method.loss_impl=reference", "method.name=svm", "method.svm.tasks=2", "loader.views=3",
           "task.n_supp=2"]
    trainer = Trainer(load_config(None, run), tmp_path)
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.02, losses
    assert isinstance(trainer.method, SVMHead) and abs(trainer.method.scale.item() - 1 / 0.2) > 1e-4
