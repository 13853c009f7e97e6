"""Under torchrun each rank computes the loss of its own rows only (Method.rank_loss, RankRows).

In one process, simulated ranks: the shares of every rank sum to the whole-task loss, and their
gradients (with respect to every row and to the heads' own parameters) sum to its gradient. Over
gloo with 2 and 4 processes, the trainer's own step code (rank_step_loss, Dist.average_grads) on a
small DDP model: the logged global loss, each rank's gradient for its rows and the weights after one
SGD step (model, head and auxiliary parameters) equal one process's on the global batch.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastssl.engine.distributed import Dist
from fastssl.engine.trainer import rank_step_loss, split_parameters
from fastssl.methods.base import Method
from fastssl.methods.contrastive import ContrastiveHead
from fastssl.methods.protonet import ProtoNetHead
from fastssl.methods.r2d2 import R2D2Head
from fastssl.methods.svm import SVMHead
from fastssl.task.builder import TaskBatch
from fastssl.task.layout import QueryMix, RankRows, TaskLayout
from fastssl.task.rotation_prediction import RotationPredictor

N_SUPP, N_QUERY, LOCAL, DIM, IN = 1, 2, 4, 5, 6
VIEWS = N_SUPP + N_QUERY
LAM = 0.3
ACROSS = torch.tensor([2, 0, 3, 1])   # a rank's mixing partners among its own images
PAIRS = torch.tensor([1, 0, 3, 2])    # partners within pairs: svm tasks of 2 images


class WholeTask(Method):
    """A method that cannot split (the base contract's default): a learnable scale and a loss that mixes
    every row with every other, computed whole on every rank."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, z, layout, targets=None):
        return torch.logsumexp(self.scale * (z @ z.mT), dim=1).mean() - z.mean()


def _heads(world: int) -> dict:
    """name -> (method factory, local mixing partners or None, with rotation prediction)."""
    return {"contrastive": (lambda: ContrastiveHead(0.5), ACROSS, True),
            "contrastive-nomix": (lambda: ContrastiveHead(0.5), None, False),
            "protonet": (lambda: ProtoNetHead(0.5), ACROSS, True),
            "r2d2": (lambda: R2D2Head(0.5, 1.0), ACROSS, False),
            "svm-tasks1": (lambda: SVMHead(0.5, 0.1, 5, 1), ACROSS, False),
            "svm-tasks=world": (lambda: SVMHead(0.5, 0.1, 5, world), ACROSS, True),
            "svm-tasks=2world": (lambda: SVMHead(0.5, 0.1, 5, 2 * world), PAIRS, False),
            "whole-task default": (WholeTask, ACROSS, True)}


def _global_partner(local: torch.Tensor, world: int) -> torch.Tensor:
    return torch.cat([local + w * LOCAL for w in range(world)])


def _rows_of(rank: int, world: int) -> torch.Tensor:
    """The global view-major rows (view v, image rank*LOCAL + i) rank holds, in its local view-major order."""
    batch = world * LOCAL
    return torch.tensor([v * batch + rank * LOCAL + i for v in range(VIEWS) for i in range(LOCAL)])


# -- one process, simulated ranks --------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("name", list(_heads(2)))
def test_rank_shares_sum_to_the_whole_loss_and_its_gradient(name, world):
    make, partner, _ = _heads(world)[name]
    _check_shares(make, partner, world)


def test_svm_tasks_straddling_ranks_unevenly_fall_back_to_the_whole_loss():
    """3 ranks of 4 images, 2 tasks of 6: neither divides the other; every rank takes a third of the whole."""
    _check_shares(lambda: SVMHead(0.5, 0.1, 5, 2), None, 3)


def _check_shares(make, partner, world):
    torch.manual_seed(0)
    head = make().double()
    mix = None if partner is None else QueryMix(_global_partner(partner, world), LAM)
    layout = TaskLayout(N_SUPP, N_QUERY, mix)
    z = torch.randn(VIEWS * world * LOCAL, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z.requires_grad_()
    inputs = [z, *head.parameters()]
    whole = head(z, layout)
    expected = torch.autograd.grad(whole, inputs)
    shares = [head.rank_loss(z, layout, None, RankRows(w, world)) for w in range(world)]
    assert float(sum(s.detach() for s in shares)) == pytest.approx(float(whole.detach()), rel=1e-13)
    got = [torch.zeros_like(t) for t in inputs]
    for share in shares:
        for total, grad in zip(got, torch.autograd.grad(share, inputs, allow_unused=True)):
            if grad is not None:
                total += grad
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-15)
    assert float(head.rank_loss(z, layout, None, RankRows()).detach()) == float(whole.detach())


@pytest.mark.parametrize("name", ["contrastive", "protonet", "r2d2", "svm-tasks1"])
def test_a_splitting_head_computes_only_its_rows(name):
    """A rank's share does not depend on another rank's query rows (only on their support, as columns)."""
    world = 2
    head = _heads(world)[name][0]().double()
    layout = TaskLayout(N_SUPP, N_QUERY)
    z = torch.randn(VIEWS * world * LOCAL, DIM, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(head.rank_loss(z, layout, None, RankRows(0, world)), z)
    other_queries = _rows_of(1, world)[N_SUPP * LOCAL:]
    mine = _rows_of(0, world)[N_SUPP * LOCAL:]
    assert torch.count_nonzero(grad[mine]) > 0
    if name == "contrastive":     # every row is a query and a column: other rows get gradient as columns
        assert torch.count_nonzero(grad[other_queries]) > 0
    else:
        assert torch.count_nonzero(grad[other_queries]) == 0


def test_rank_rows_select_and_reorder():
    rows = RankRows(1, 2)
    x = torch.arange(3 * 4)          # 3 views of a global batch of 4 images, view-major
    assert rows.images(4) == slice(2, 4)
    assert rows.own(x, 3).tolist() == [2, 3, 6, 7, 10, 11]
    major = rows.rank_major(x, 3)
    assert major.tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    first = rows.first_row(len(x))
    assert major[first:first + 6].tolist() == rows.own(x, 3).tolist()
    assert RankRows().whole and RankRows().own(x, 3).tolist() == x.tolist()
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        RankRows(0, 3).own(x, 3)


def test_rotation_prediction_shares_use_each_ranks_own_rotations():
    world = 2
    torch.manual_seed(0)
    aux = RotationPredictor(DIM).double()
    z = torch.randn(VIEWS * world * LOCAL, DIM, dtype=torch.float64, requires_grad=True)
    rotations = [torch.tensor([0, 1, 2, 3]), torch.tensor([3, 3, 1, 0])]
    layout = TaskLayout(N_SUPP, N_QUERY, QueryMix(_global_partner(ACROSS, world), LAM))
    whole = aux(z, layout, torch.cat(rotations))
    expected = torch.autograd.grad(whole, [z, *aux.parameters()])
    local = TaskLayout(N_SUPP, N_QUERY, QueryMix(ACROSS, LAM))
    shares = [aux.term(z, layout, TaskBatch([], [], local, rotations[w]), RankRows(w, world)) for w in range(world)]
    assert float(sum(shares).detach()) == pytest.approx(float(whole.detach()), rel=1e-13)
    got = torch.autograd.grad(sum(shares), [z, *aux.parameters()])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-15)


# -- gloo processes ----------------------------------------------------------------------------------------



def _inputs(world: int):
    """The global batch's inputs (view-major rows) and each image's rotation."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(VIEWS * world * LOCAL, IN, dtype=torch.float64, generator=g)
    return x, torch.randint(0, 4, (world * LOCAL,), generator=g)


def _parts(make, rotation: bool):
    """The model, method and auxiliary losses of a case, the same on every rank and in the reference."""
    torch.manual_seed(3)
    model = nn.Linear(IN, DIM).double()
    method = make().double()
    auxiliaries = nn.ModuleList([RotationPredictor(DIM, 0.5)] if rotation else []).double()
    return model, method, auxiliaries


def _step(model, forward, method, auxiliaries, x, layout, task, ddp: Dist, local_layout=None):
    """One training step as Trainer.train_step takes it: gather, shares, backward, average, SGD."""
    params = [*model.parameters(), *method.parameters(), *auxiliaries.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.5)
    z_local = forward(x)
    z_local.retain_grad()
    z = ddp.gather_rows(z_local, VIEWS)
    loss = rank_step_loss(method, auxiliaries, z, layout, None, task, ddp)
    optimizer.zero_grad()
    loss.backward.backward()
    ddp.average_grads(split_parameters(method, auxiliaries))
    optimizer.step()
    return {"total": loss.total, "terms": loss.terms, "grad": z_local.grad,
            "after": [p.detach().clone() for p in params]}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ddp = Dist(rank, world, rank)
    x, rotations = _inputs(world)
    results = {}
    for name, (make, partner, rotation) in _heads(world).items():
        model, method, auxiliaries = _parts(make, rotation)
        forward = nn.parallel.DistributedDataParallel(model)
        mix = None if partner is None else QueryMix(partner, LAM)
        local = TaskLayout(N_SUPP, N_QUERY, mix)
        own = rotations[rank * LOCAL:(rank + 1) * LOCAL]
        results[name] = _step(model, forward, method, auxiliaries, x[_rows_of(rank, world)],
                              local.across(world, LOCAL), TaskBatch([], [], local, own), ddp)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_step_like_one_process(tmp_path, world, gloo_port):
    mp.spawn(_worker, args=(world, gloo_port, str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    x, rotations = _inputs(world)
    for name, (make, partner, rotation) in _heads(world).items():
        model, method, auxiliaries = _parts(make, rotation)
        mix = None if partner is None else QueryMix(_global_partner(partner, world), LAM)
        layout = TaskLayout(N_SUPP, N_QUERY, mix)
        want = _step(model, model, method, auxiliaries, x, layout, TaskBatch([], [], layout, rotations), Dist())
        for rank, got in enumerate(r[name] for r in ranks):
            where = f"{name}, rank {rank} of {world}"
            assert float(got["total"]) == pytest.approx(float(want["total"]), rel=1e-12), where
            assert got["terms"].keys() == want["terms"].keys(), where
            for metric, term in want["terms"].items():
                assert float(got["terms"][metric]) == pytest.approx(float(term), rel=1e-12), where
            # this rank's rows get world x the gradient (DDP's average divides it back)
            torch.testing.assert_close(got["grad"], world * want["grad"][_rows_of(rank, world)], rtol=1e-10,
                                       atol=1e-14, msg=where)
            for a, b in zip(got["after"], want["after"]):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14, msg=where)


@pytest.mark.parametrize("make", [lambda: ContrastiveHead(0.5, impl="triton"), lambda: ProtoNetHead(0.5, impl="triton"),
                                  lambda: R2D2Head(0.5, 1.0, impl="triton")], ids=["contrastive", "protonet", "r2d2"])
def test_fused_kernel_shares_sum_to_the_reference_loss(make):
    """The Triton path (interpreter on the CPU): a rank's rows as a block of the columns (row_offset), fp32."""
    world = 2
    head = make()
    reference = make()
    reference.impl = "reference"
    layout = TaskLayout(N_SUPP, N_QUERY, QueryMix(_global_partner(ACROSS, world), LAM))
    z = torch.randn(VIEWS * world * LOCAL, DIM, generator=torch.Generator().manual_seed(4)).requires_grad_()
    whole = reference(z, layout)
    (expected,) = torch.autograd.grad(whole, z)
    shares = [head.rank_loss(z, layout, None, RankRows(w, world)) for w in range(world)]
    (got,) = torch.autograd.grad(sum(shares), z)
    assert float(sum(shares).detach()) == pytest.approx(float(whole.detach()), rel=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
