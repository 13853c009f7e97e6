"""The NT-Xent path (dispatch -> reference) against explicit loops over pairs in float64."""
import math

import pytest
import torch

from fastssl.methods import MethodContext, build_method
from fastssl.task.layout import TaskLayout
from fastssl.config import load_config
from fastssl.kernels import nt_xent, sim_xent


def naive_nt_xent(z: torch.Tensor, n_views: int, tau: float) -> float:
    """Loops over every (anchor, positive) pair: -log(exp(s_ap/tau) / sum_{k != a} exp(s_ak/tau))."""
    z = z.double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z.shape[0]
    batch = n // n_views
    total = 0.0
    for a in range(n):
        denom = sum(math.exp(float(z[a] @ z[k]) / tau) for k in range(n) if k != a)
        positives = [p for p in range(n) if p != a and p % batch == a % batch]
        total += sum(-math.log(math.exp(float(z[a] @ z[p]) / tau) / denom) for p in positives) / len(positives)
    return total / n


@pytest.mark.parametrize("n_views", [2, 3, 4])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_equals_naive_pair_loops(n_views, tau):
    torch.manual_seed(n_views)
    z = torch.randn(n_views * 5, 7, dtype=torch.float64)
    assert float(nt_xent(z, n_views, tau)) == pytest.approx(naive_nt_xent(z, n_views, tau), rel=1e-10)


def test_two_views_is_simclr_formula():
    """For 2 views each row has one positive: the loss is the textbook 2N-way cross-entropy."""
    torch.manual_seed(0)
    batch, tau = 6, 0.2
    z = torch.nn.functional.normalize(torch.randn(2 * batch, 5, dtype=torch.float64), dim=1)
    logits = z @ z.T / tau
    logits.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    expected = torch.nn.functional.cross_entropy(logits, partner)
    assert float(nt_xent(z, 2, tau)) == pytest.approx(float(expected), rel=1e-12)


def test_head_gradient_matches_naive_autograd_in_float64():
    torch.manual_seed(1)
    z = torch.randn(3 * 4, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: nt_xent(x, 3, 0.3), (z,))
    head = build_method(load_config(None, ["method.contrastive.temperature=0.3"]).method, MethodContext(6))
    assert float(head(z, TaskLayout(1, 2)).detach()) == pytest.approx(naive_nt_xent(z.detach(), 3, 0.3), rel=1e-10)


def test_sim_xent_targets_mode_equals_cross_entropy_with_bias_and_offset_mask():
    torch.manual_seed(2)
    q, k = torch.randn(4, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    bias, targets = torch.randn(9, dtype=torch.float64), torch.tensor([0, 8, 3, 2])
    logits = 2.0 * q @ k.T + bias
    for i in range(4):
        logits[i, 5 + i] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    got = sim_xent(q, k, scale=2.0, col_bias=bias, targets=targets, self_mask=True, row_offset=5, reduction="sum")
    assert float(got) == pytest.approx(float(expected), rel=1e-12)


def test_bad_arguments_are_named():
    z = torch.randn(6, 3)
    with pytest.raises(ValueError, match="n_views=4"):
        nt_xent(z, 4, 0.1)
    with pytest.raises(ValueError, match="exactly one of targets or instance_ids"):
        sim_xent(z, z, scale=1.0)
    with pytest.raises(ValueError, match="no positive column"):
        sim_xent(z, z, scale=1.0, instance_ids=torch.arange(6), self_mask=True, impl="reference")
