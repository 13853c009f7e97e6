"""Heads against independent float64 computations: ProtoNet vs explicit class means and distances."""
import pytest
import torch

from fastssl.config import MethodConfig
from fastssl.heads import ContrastiveHead, ProtoNetHead, build_head
from fastssl.kernels import runtime


def explicit_protonet(z: torch.Tensor, n_views: int, n_supp: int, tau: float) -> torch.Tensor:
    """Loops: prototype = mean of an image's support rows; loss = CE over -||q - p||^2 / tau per query."""
    z = torch.nn.functional.normalize(z.double(), dim=1)
    batch = z.shape[0] // n_views
    protos = torch.stack([torch.stack([z[v * batch + i] for v in range(n_supp)]).mean(0) for i in range(batch)])
    losses = []
    for v in range(n_supp, n_views):
        for i in range(batch):
            query = z[v * batch + i]
            logits = -((query[None, :] - protos) ** 2).sum(1) / tau
            losses.append(-torch.log_softmax(logits, 0)[i])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("n_views,n_supp", [(2, 1), (3, 2), (4, 1)])
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_protonet_equals_explicit_means_and_distances(n_views, n_supp, impl):
    if impl == "triton" and not runtime.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 was not set before import")
    torch.manual_seed(n_views * 10 + n_supp)
    z = torch.randn(n_views * 9, 16, requires_grad=True)
    loss = ProtoNetHead(0.3, n_supp, impl=impl)(z, n_views)
    (grad,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    expected = explicit_protonet(z64, n_views, n_supp, 0.3)
    (grad64,) = torch.autograd.grad(expected, z64)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float((grad.double() - grad64).norm() / grad64.norm()) < 1e-5


def test_protonet_gradient_in_float64_passes_gradcheck():
    z = torch.randn(3 * 4, 5, dtype=torch.float64, requires_grad=True)
    head = ProtoNetHead(0.5, 2)
    torch.autograd.gradcheck(lambda x: head(x, 3), (z,))
    assert float(head(z, 3).detach()) == pytest.approx(float(explicit_protonet(z.detach(), 3, 2, 0.5)), rel=1e-12)


def test_protonet_needs_a_query_view():
    with pytest.raises(ValueError, match="n_supp=2"):
        ProtoNetHead(0.5, 2)(torch.randn(4, 3), 2)


def test_build_head_passes_the_forced_implementation():
    head = build_head(MethodConfig(head="protonet", temperature=0.1, n_supp=1, loss_impl="reference"))
    assert isinstance(head, ProtoNetHead) and head.impl == "reference" and head.n_supp == 1
    head = build_head(MethodConfig(head="contrastive", loss_impl="triton"))
    assert isinstance(head, ContrastiveHead) and head.impl == "triton"
