"""Heads against independent float64 computations: ProtoNet vs explicit class means and distances,
R2D2 vs an explicit normal-equations solve per class."""
import math

import pytest
import torch

from fastssl.config import load_config
from fastssl.methods import MethodContext, build_method
from fastssl.methods.contrastive import ContrastiveHead
from fastssl.methods.protonet import ProtoNetHead
from fastssl.methods.r2d2 import R2D2Head
from fastssl.task.layout import TaskLayout
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
    loss = ProtoNetHead(0.3, impl=impl)(z, TaskLayout(n_supp, n_views - n_supp))
    (grad,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    expected = explicit_protonet(z64, n_views, n_supp, 0.3)
    (grad64,) = torch.autograd.grad(expected, z64)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float((grad.double() - grad64).norm() / grad64.norm()) < 1e-5


def test_protonet_gradient_in_float64_passes_gradcheck():
    z = torch.randn(3 * 4, 5, dtype=torch.float64, requires_grad=True)
    head, layout = ProtoNetHead(0.5), TaskLayout(2, 1)
    torch.autograd.gradcheck(lambda x: head(x, layout), (z,))
    assert float(head(z, layout).detach()) == pytest.approx(float(explicit_protonet(z.detach(), 3, 2, 0.5)), rel=1e-12)


def test_protonet_needs_a_query_view():
    with pytest.raises(ValueError, match="protonet: 4 rows, n_supp=2, n_query=0"):
        ProtoNetHead(0.5)(torch.randn(4, 3), TaskLayout(2, 0))


def test_build_method_passes_the_forced_implementation():
    def method(*overrides: str):
        return load_config(None, list(overrides)).method

    head = build_method(method("method.name=protonet", "method.protonet.temperature=0.1", "method.loss_impl=reference"),
                        MethodContext(8))
    assert isinstance(head, ProtoNetHead) and head.impl == "reference" and head.temperature == 0.1
    head = build_method(method("method.loss_impl=triton"), MethodContext(8))
    assert isinstance(head, ContrastiveHead) and head.impl == "triton"
    head = build_method(method("method.name=r2d2", "method.r2d2.temperature=0.25", "method.r2d2.ridge_lambda=0.5",
                               "method.loss_impl=triton"), MethodContext(8))
    assert isinstance(head, R2D2Head) and head.impl == "triton"
    assert [float(p.detach()) for p in (head.scale, head.bias, head.log_lambda.exp())] == pytest.approx([4.0, 0.0, 0.5])


def explicit_r2d2(z, n_views, n_supp, scale, bias, lam):
    """Loops over the batch: X = support rows, one regression per class b with targets 1[image == b],
    solved from the normal equations of whichever side is the smaller; CE over scale * q.w_b + bias."""
    z = torch.nn.functional.normalize(z, dim=1)
    batch = z.shape[0] // n_views
    x = torch.stack([z[v * batch + i] for v in range(n_supp) for i in range(batch)])
    image = [i for _ in range(n_supp) for i in range(batch)]
    columns = []
    for b in range(batch):
        y = torch.tensor([1.0 if i == b else 0.0 for i in image], dtype=z.dtype)
        if x.shape[0] < x.shape[1]:
            alpha = torch.linalg.solve(x @ x.T + lam * torch.eye(x.shape[0], dtype=z.dtype), y)
            columns.append(x.T @ alpha)
        else:
            columns.append(torch.linalg.solve(x.T @ x + lam * torch.eye(x.shape[1], dtype=z.dtype), x.T @ y))
    w = torch.stack(columns, dim=1)
    losses = [-torch.log_softmax(scale * z[v * batch + i] @ w + bias, 0)[i]
              for v in range(n_supp, n_views) for i in range(batch)]
    return torch.stack(losses).mean()


@pytest.mark.parametrize("n_views,n_supp,dim", [(2, 1, 16), (3, 2, 8), (4, 1, 40)], ids=["primal", "primal-2supp", "dual"])
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_r2d2_equals_explicit_ridge_per_class_with_grads(n_views, n_supp, dim, impl):
    """Loss and gradients for z, the scale and lambda against float64 loops (12 images per batch)."""
    if impl == "triton" and not runtime.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 was not set before import")
    torch.manual_seed(n_views + dim)
    head = R2D2Head(0.3, ridge_lambda=0.7, impl=impl)
    z = torch.randn(n_views * 12, dim, requires_grad=True)
    loss = head(z, TaskLayout(n_supp, n_views - n_supp))
    grads = torch.autograd.grad(loss, (z, head.scale, head.bias, head.log_lambda))
    z64 = z.detach().double().requires_grad_()
    scale64 = torch.tensor(1 / 0.3, dtype=torch.float64, requires_grad=True)
    lam64 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    expected = explicit_r2d2(z64, n_views, n_supp, scale64, 0.0, lam64)
    gz, gscale, glam = torch.autograd.grad(expected, (z64, scale64, lam64))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float((grads[0].double() - gz).norm() / gz.norm()) < 1e-4
    assert float(grads[1]) == pytest.approx(float(gscale), rel=1e-4)
    assert float(grads[3]) == pytest.approx(float(glam) * 0.7, rel=1e-4, abs=1e-7)   # d/dlog(lam) = lam d/dlam
    assert float(grads[2]) == pytest.approx(0.0, abs=1e-6)   # a shared bias cancels in the softmax


def test_r2d2_gradient_in_float64_passes_gradcheck():
    """Through z, the scale and log lambda at once (the reference path keeps float64)."""
    head = R2D2Head(0.5, ridge_lambda=0.3).double()

    def loss(z, scale, log_lambda):
        params = {"scale": scale, "bias": head.bias, "log_lambda": log_lambda}
        return torch.func.functional_call(head, params, (z, TaskLayout(1, 1)))

    z = torch.randn(2 * 5, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    log_lambda = torch.tensor(math.log(0.3), dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(loss, (z, scale, log_lambda))
    expected = explicit_r2d2(z.detach(), 2, 1, 1.7, 0.0, 0.3)
    assert float(loss(z, scale, log_lambda).detach()) == pytest.approx(float(expected), rel=1e-10)


def test_r2d2_needs_a_query_view():
    with pytest.raises(ValueError, match="r2d2: 4 rows, n_supp=2, n_query=0"):
        R2D2Head(0.5, ridge_lambda=1.0)(torch.randn(4, 3), TaskLayout(2, 0))


def explicit_nt_xent(rows: torch.Tensor, n_views: int, tau: float) -> torch.Tensor:
    """Loops over float64 unit rows: each row's mean -log softmax over its other views, self excluded."""
    batch = rows.shape[0] // n_views
    losses = []
    for r in range(rows.shape[0]):
        logits = rows @ rows[r] / tau
        logits[r] = -math.inf
        log_prob = torch.log_softmax(logits, 0)
        positives = [c for c in range(rows.shape[0]) if c != r and c % batch == r % batch]
        losses.append(-log_prob[positives].mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_bf16_operands_are_the_rounded_unit_rows_summed_exactly(impl):
    """operand_dtype=bf16: the loss is NT-Xent of the bf16-rounded unit rows (products exact in fp32),
    and its error against the unrounded float64 loss stays in bf16's band (bench precision's rule)."""
    if impl == "triton" and not runtime.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 was not set before import")
    torch.manual_seed(3)
    z = torch.randn(2 * 24, 32)
    loss = ContrastiveHead(0.2, impl=impl, operand_dtype=torch.bfloat16)(z, TaskLayout(1, 1))
    rounded = torch.nn.functional.normalize(z, dim=1).bfloat16().double()
    assert float(loss) == pytest.approx(float(explicit_nt_xent(rounded, 2, 0.2)), rel=1e-6)
    exact = explicit_nt_xent(torch.nn.functional.normalize(z.double(), dim=1), 2, 0.2)
    assert 0 < abs(float(loss) - float(exact)) / float(exact) < 1e-2


def test_protonet_bf16_operands_round_queries_and_prototypes_not_the_bias():
    torch.manual_seed(4)
    z = torch.randn(3 * 10, 16)
    loss = ProtoNetHead(0.5, impl="reference", operand_dtype=torch.bfloat16)(z, TaskLayout(2, 1))
    unit = torch.nn.functional.normalize(z.double(), dim=1).float().double()
    protos = unit.reshape(3, 10, 16)[:2].mean(0)
    queries = unit.reshape(3, 10, 16)[2]
    logits = 2 * queries.bfloat16().double() @ protos.bfloat16().double().T / 0.5 - (protos ** 2).sum(1) / 0.5
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(10))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("setting,precision,dtype", [
    ("auto", "bf16", torch.bfloat16), ("auto", "fp32", torch.float32), ("auto", "fp16", torch.float32),
    ("fp32", "bf16", torch.float32), ("bf16", "fp32", torch.bfloat16)])
def test_loss_operands_default_to_bf16_under_bf16_training(setting, precision, dtype):
    from fastssl.engine.precision import loss_operand_dtype

    assert loss_operand_dtype(setting, precision) == dtype
    head = build_method(load_config(None, [f"method.loss_dtype={setting}"]).method,
                        MethodContext(16, operand_dtype=loss_operand_dtype(setting, precision)))
    assert head.operand_dtype == dtype
