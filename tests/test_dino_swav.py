"""DINO and SwAV: loss and gradient against their authors' code written out in the test in float64
(DINO's DINOLoss with a torch weight-normalised last layer, SwAV's exp-domain Sinkhorn and swapped
prediction), their schedules and state (centre, teacher, frozen layers, queue), and runs that train,
resume bitwise and export."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastssl import methods
from fastssl.config import ConfigError, load_config
from fastssl.methods import MethodContext
from fastssl.methods.dino import DINOHead, teacher_temperature
from fastssl.methods.swav import SwAVHead, sinkhorn_log_scaling
from fastssl.task.layout import TaskLayout

B, D, K = 5, 6, 7


def _dino(views_global=2, **settings):
    ctx = MethodContext(embed_dim=D, online=nn.Linear(3, D), total_steps=10, steps_per_epoch=4,
                        global_views=views_global)
    return DINOHead.build(DINOHead.Settings(prototypes=K, **settings), ctx).double()


def _dino_reference(student_z, teacher_z, head, center, student_temp, teacher_temp, n_views, n_global):
    """DINO's code: the head's last layer is weight_norm(Linear(bottleneck, K)) with g = 1 on the unit
    bottleneck (torch's weight-norm primitive, as nn.utils.weight_norm computes it); DINOLoss pairs every
    teacher chunk iq with every student chunk v != iq."""
    def last_layer(v):
        return lambda x: x @ torch._weight_norm(v, torch.ones(K, 1, dtype=v.dtype), 0).T
    student_out = last_layer(head.prototypes.weight)(F.normalize(student_z, dim=-1)) / student_temp
    with torch.no_grad():
        teacher_output = last_layer(head.teacher_prototypes.weight.clone())(F.normalize(teacher_z, dim=-1))
    teacher_out = F.softmax((teacher_output - center) / teacher_temp, dim=-1).chunk(n_global)
    student_chunks = student_out.chunk(n_views)
    total, terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(n_views):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student_chunks[v], dim=-1), dim=-1).mean()
            terms += 1
    return total / terms, teacher_output.mean(0)


@pytest.mark.parametrize("views, n_global", [(2, 2), (3, 2), (6, 2), (4, 1)])
def test_dino_loss_gradient_and_centre_equal_its_code_in_float64(views, n_global):
    torch.manual_seed(views)
    head = _dino(n_global)
    head.teacher_prototypes.weight.data.add_(0.3 * torch.randn(K, D, dtype=torch.float64))   # a teacher apart
    head.center.copy_(torch.randn(K, dtype=torch.float64) * 0.1)
    head.begin_step(8)   # epoch 2: the last layer is trained
    z = torch.randn(views * B, D, dtype=torch.float64, requires_grad=True)
    teacher_z = torch.randn(n_global * B, D, dtype=torch.float64)
    loss = head(z, TaskLayout(1, views - 1, global_views=n_global), teacher_z)
    expected, batch_center = _dino_reference(z, teacher_z, head, head.center.clone(), 0.1, 0.04, views, n_global)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-12)
    params = [z, head.prototypes.weight]
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    before = head.center.clone()
    teacher_before = head.teacher_prototypes.weight.clone()
    head.after_step(8)
    torch.testing.assert_close(head.center, 0.9 * before + 0.1 * batch_center, rtol=1e-12, atol=1e-14)
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 8 / 10) + 1) / 2
    torch.testing.assert_close(head.teacher_prototypes.weight, tau * teacher_before + (1 - tau) * head.prototypes.weight)


def test_dino_teacher_temperature_follows_its_linspace_schedule():
    warm, final, epochs, total = 0.04, 0.07, 30, 100
    schedule = np.concatenate((np.linspace(warm, final, epochs), np.ones(total - epochs) * final))   # DINO's code
    assert [teacher_temperature(e, warm, final, epochs) for e in range(total)] == pytest.approx(schedule.tolist())
    assert teacher_temperature(0, warm, final, 0) == final


def test_dino_last_layer_is_frozen_in_the_first_epoch_and_its_temperature_warms_up():
    head = _dino(warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_epochs=3)
    z, teacher_z = torch.randn(2 * B, D, dtype=torch.float64, requires_grad=True), torch.randn(2 * B, D).double()
    for step, frozen, temp in ((3, True, 0.02), (4, False, 0.04), (12, False, 0.06)):   # 4 steps per epoch
        head.begin_step(step)
        head.prototypes.weight.grad = None
        head(z, TaskLayout(1, 1), teacher_z).backward()
        assert (head.prototypes.weight.grad is None) == frozen
        expected, _ = _dino_reference(z, teacher_z, head, head.center, 0.1, temp, 2, 2)
        assert math.isclose(head(z, TaskLayout(1, 1), teacher_z).item(), expected.item(), rel_tol=1e-12)


def test_dino_with_a_trainable_gain_normalises_then_scales_the_rows():
    head = _dino(norm_last_layer=False)
    head.prototypes.scale.data.uniform_(0.5, 2.0)
    rows = head.prototypes.weight_normed()
    torch.testing.assert_close(rows.norm(dim=1), head.prototypes.scale.float().detach().to(rows.dtype))


def _swav(n_global=2, **settings):
    ctx = MethodContext(embed_dim=D, steps_per_epoch=4, global_views=n_global)
    head = SwAVHead.build(SwAVHead.Settings(prototypes=K, **settings), ctx).double()
    head.prototypes.normalize_()
    return head


def _swav_sinkhorn(out, epsilon, iterations):
    """SwAV's distributed_sinkhorn on one process, as its code writes it (exp domain)."""
    Q = torch.exp(out / epsilon).t()
    n, k = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= k
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= n
    Q *= n
    return Q.t()


def _swav_reference(z, weight, views, crops_for_assign, queue=None, temperature=0.1, epsilon=0.05):
    """SwAV's training loop: scores of the unit embeddings, codes per assigned crop, swapped prediction."""
    embedding = F.normalize(z, dim=1)
    output = embedding @ weight.t()
    loss = 0
    for i, crop_id in enumerate(crops_for_assign):
        with torch.no_grad():
            out = output[B * crop_id:B * (crop_id + 1)].detach()
            if queue is not None:
                out = torch.cat((queue[i] @ weight.t(), out))
            q = _swav_sinkhorn(out, epsilon, 3)[-B:]
        subloss = 0
        for v in np.delete(np.arange(views), crop_id):
            x = output[B * v:B * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (views - 1)
    return loss / len(crops_for_assign)


@pytest.mark.parametrize("views, n_global, queued", [(2, 2, False), (3, 2, False), (6, 2, True), (3, 1, True)])
def test_swav_loss_and_gradient_equal_its_code_in_float64(views, n_global, queued):
    torch.manual_seed(views)
    head = _swav(n_global, queue_length=2 * B if queued else 0)
    if queued:
        head.queue.copy_(F.normalize(torch.randn(n_global, 2 * B, D, dtype=torch.float64), dim=-1))
        head.load_state_dict({**head.state_dict(), "queue_rows": torch.tensor(2 * B)})   # as a resumed run's
    head.begin_step(1000)
    z = torch.randn(views * B, D, dtype=torch.float64, requires_grad=True)
    loss = head(z, TaskLayout(1, views - 1, global_views=n_global))
    expected = _swav_reference(z, head.prototypes.weight, views, range(n_global), head.queue if queued else None)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-11)
    params = [z, head.prototypes.weight]
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_sinkhorn_scaling_gives_swav_codes_and_balances_the_prototypes():
    scores = F.normalize(torch.randn(40, D, dtype=torch.float64), dim=1) @ F.normalize(
        torch.randn(K, D, dtype=torch.float64), dim=1).T
    codes = torch.softmax(scores / 0.05 + sinkhorn_log_scaling(scores, 0.05, 3), dim=1)
    torch.testing.assert_close(codes, _swav_sinkhorn(scores, 0.05, 3), rtol=1e-10, atol=1e-12)
    balanced = torch.softmax(scores / 0.05 + sinkhorn_log_scaling(scores, 0.05, 200), dim=1)
    torch.testing.assert_close(balanced.sum(0), torch.full((K,), 40 / K, dtype=torch.float64), rtol=1e-6, atol=1e-8)
    tiny = sinkhorn_log_scaling(scores.float(), 0.005, 3)   # exp(1 / 0.005) overflows float32: the log domain does not
    assert torch.isfinite(tiny).all()


def test_swav_queue_fills_from_its_epoch_newest_first_and_is_used_once_full():
    head = _swav(2, queue_length=2 * B, queue_start_epoch=1, freeze_prototypes_epochs=0)
    layout = TaskLayout(1, 2, global_views=2)
    batches = [torch.randn(3 * B, D, dtype=torch.float64) for _ in range(4)]
    for step, z in zip((3, 4, 5, 6), batches):   # 4 steps per epoch: step 3 is epoch 0, before the queue starts
        head.begin_step(step)
        head(z, layout)
        head.after_step(step)
    rows = [F.normalize(z, dim=1)[:2 * B].view(2, B, D) for z in batches]
    torch.testing.assert_close(head.queue, torch.cat([rows[3], rows[2]], 1))   # steps 6 then 5; step 4 pushed out
    assert int(head.queue_rows) == head._queue_rows == 2 * B
    head.begin_step(7)
    z = torch.randn(3 * B, D, dtype=torch.float64)
    expected = _swav_reference(z, head.prototypes.weight, 3, range(2), head.queue)
    assert math.isclose(head(z, layout).item(), expected.item(), rel_tol=1e-11)


def test_swav_prototypes_are_unit_rows_and_frozen_for_their_first_steps():
    head = _swav(freeze_prototypes_epochs=1)   # 4 steps per epoch
    head.prototypes.weight.data.mul_(3)
    z = torch.randn(2 * B, D, dtype=torch.float64, requires_grad=True)
    for step, frozen in ((3, True), (4, False)):
        head.begin_step(step)
        torch.testing.assert_close(head.prototypes.weight.norm(dim=1), torch.ones(K, dtype=torch.float64))
        head.prototypes.weight.grad = None
        head(z, TaskLayout(1, 1)).backward()
        assert (head.prototypes.weight.grad is None) == frozen


@pytest.mark.parametrize("name, rule", [("dino", "matches a teacher's view"), ("swav", "predicts each image's codes")])
def test_query_mixing_is_refused(name, rule):
    with pytest.raises(ConfigError, match=f"task.query_mix='mixup': {name} {rule}"):
        methods.check(load_config(None, [f"method.name={name}", "task.query_mix=mixup"]))


def test_swav_queue_must_hold_whole_batches():
    with pytest.raises(ConfigError, match=r"method.swav.queue_length=100: must be a multiple of loader.batch_size \(64"):
        methods.check(load_config(None, ["method.name=swav", "method.swav.queue_length=100", "loader.batch_size=64"]))


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, extra", [("dino", ["method.dino.prototypes=32"]),
                                         ("swav", ["method.swav.prototypes=32", "method.swav.queue_length=16",
                                                   "method.swav.queue_start_epoch=0"])])
def test_multicrop_run_trains_resumes_bitwise_and_exports(name, extra, tmp_path, crash_after_first_checkpoint):
    """Two epochs of 4 steps with 2 x 32 px + 6 x 16 px views: the frozen layer's first epoch, then training;
    SwAV's queue (two batches) fills and is used; the resumed run's weights and method state equal the
    straight run's."""
    from fastssl.checkpoint import load_checkpoint
    from fastssl.engine.trainer import Trainer
    from fastssl.export.exporter import export
    cfg = load_config([ROOT / "configs" / "heads" / f"{name}.yaml", ROOT / "configs" / "tricks" / "multicrop.yaml"], [
        "data.num_train=32", "data.num_test=16", "loader.batch_size=8", "train.epochs=2", "train.ckpt_every=3",
        "train.precision=fp32", "knn.k=5", "knn.every_epochs=0", "model.projector_hidden=32",
        "model.projector_out=16", *extra])
    sizes = []
    straight = Trainer(cfg, tmp_path / "straight")
    step = straight.train_step
    straight.train_step = lambda task: (sizes.append([v.shape[-1] for v in task.views]), step(task))
    result = straight.fit()
    assert result.steps == 8 and math.isfinite(result.knn_top1)
    assert sizes[0] == [32, 32] + [16] * 6
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for part in ("model", "method"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    if name == "swav":
        assert int(a["method"]["queue_rows"]) == 16
    else:
        assert not torch.equal(a["method"]["center"], torch.zeros(32))
    for network in (("online", "target") if name == "dino" else ("online",)):
        path, lines = export(tmp_path / "straight", network=network)
        assert path.is_file() and lines[-1].startswith("check: max abs error 0 "), lines


WORLD, LOCAL = 2, 3


def _global_rows(views: int, seed: int) -> torch.Tensor:
    return torch.randn(views * WORLD * LOCAL, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _local_rows(rows: torch.Tensor, views: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s images' rows of the global view-major rows, in its local view-major order."""
    return rows.view(views, WORLD, LOCAL, D)[:, rank].reshape(-1, D)


def _ranked_worker(rank: int, port: int, out: str) -> None:
    import os
    import torch.distributed as dist
    from fastssl.engine.distributed import Dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ddp, result = Dist(rank, WORLD, rank), {}
    for name, make in (("dino", _dino), ("swav", _swav)):
        torch.manual_seed(0)
        head = make()
        z = _local_rows(_global_rows(3, 1), 3, rank).requires_grad_()
        teacher = ddp.gather_rows(_local_rows(_global_rows(2, 2), 2, rank), 2)
        head.begin_step(8)
        loss = head(ddp.gather_rows(z, 3), TaskLayout(1, 2, global_views=2), teacher if name == "dino" else None)
        loss.backward()
        result[name] = {"loss": loss.detach(), "grad": z.grad,
                        "state": head._batch_center if name == "dino" else head._embeddings}
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_under_torchrun_the_centre_and_the_codes_are_the_global_batch_s(tmp_path, gloo_port):
    """Two gloo ranks, each holding half the images: DINO's loss, gradient and batch centre and SwAV's loss,
    gradient and queue rows equal one process's on the whole batch (the centre's mean and Sinkhorn's sums
    run over every rank's rows)."""
    import torch.multiprocessing as mp
    mp.spawn(_ranked_worker, args=(gloo_port, str(tmp_path)), nprocs=WORLD)
    for name, make in (("dino", _dino), ("swav", _swav)):
        torch.manual_seed(0)   # the prototypes every rank starts from
        head = make()
        z = _global_rows(3, 1).requires_grad_()
        head.begin_step(8)
        loss = head(z, TaskLayout(1, 2, global_views=2), _global_rows(2, 2) if name == "dino" else None)
        (grad,) = torch.autograd.grad(loss, z)
        state = head._batch_center if name == "dino" else head._embeddings
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[name]
            assert float(got["loss"]) == pytest.approx(float(loss), rel=1e-12)
            torch.testing.assert_close(got["grad"], WORLD * _local_rows(grad, 3, rank), rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(got["state"], state, rtol=1e-12, atol=1e-14)
