"""Every classifying head's monitoring logits (the contract's "loss and logits"): the explicit logits and
the task accuracy against float64 loops, and the trainer logging it as task_top1."""
import pytest
import torch

from fastssl.config import load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl.methods.contrastive import ContrastiveHead
from fastssl.methods.protonet import ProtoNetHead
from fastssl.methods.r2d2 import R2D2Head
from fastssl.methods.svm import SVMHead
from fastssl.task.layout import TaskLayout


def _unit(z):
    return z / z.norm(dim=1, keepdim=True)


def test_contrastive_logits_and_top1_by_loops():
    torch.manual_seed(0)
    batch, tau = 6, 0.5
    z = torch.randn(3 * batch, 4, dtype=torch.float64)
    out = ContrastiveHead(tau).logits(z, TaskLayout(1, 2))
    zn = _unit(z)
    hits = 0
    for r in range(3 * batch):
        scores = {c: float(zn[r] @ zn[c] / tau) for c in range(3 * batch) if c != r}
        for c, value in scores.items():
            assert float(out.logits[r, c]) == pytest.approx(value, rel=1e-12)
        hits += max(scores, key=scores.get) % batch == r % batch
    assert float(out.top1()) == pytest.approx(hits / (3 * batch), abs=1e-7)   # a float32 mean


def test_protonet_logits_are_negative_squared_distances_over_tau():
    torch.manual_seed(1)
    batch, tau = 5, 0.7
    z = torch.randn(3 * batch, 4, dtype=torch.float64)
    out = ProtoNetHead(tau).logits(z, TaskLayout(2, 1))
    zn = _unit(z).view(3, batch, 4)
    protos = zn[:2].mean(0)
    hits = 0
    for i in range(batch):
        d = [float(((zn[2, i] - protos[j]) ** 2).sum()) for j in range(batch)]
        assert out.logits[i].tolist() == pytest.approx([-x / tau for x in d], rel=1e-10)
        hits += min(range(batch), key=lambda j: d[j]) == i
    assert float(out.top1()) == pytest.approx(hits / batch, abs=1e-7)   # a float32 mean


def test_r2d2_and_svm_logits_agree_with_their_losses():
    """The loss is the mean cross-entropy of exactly these logits against the row classes."""
    torch.manual_seed(2)
    z = torch.randn(2 * 8, 5, dtype=torch.float64)
    layout = TaskLayout(1, 1)
    for head in (R2D2Head(0.5, ridge_lambda=0.3).double(), SVMHead(0.2, c=0.3, iters=40, tasks=2).double()):
        out = head.logits(z, layout)
        expected = torch.nn.functional.cross_entropy(out.logits, out.row_classes)
        assert float(head(z, layout).detach()) == pytest.approx(float(expected.detach()), rel=1e-10)
        assert out.logits.shape == ((8, 8) if isinstance(head, R2D2Head) else (8, 4))


def test_trainer_logs_task_top1_for_classifying_heads_only(tmp_path):
    run = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.max_steps=2", "train.log_every=1",
           "train.device=cpu", "train.precision=fp32", "knn.k=5", "knn.every_epochs=0", "model.projector_hidden=16",
           "model.projector_out=8", "method.loss_impl=reference", "augment.impl=reference"]
    for head, logged in (("protonet", True), ("byol", False)):
        Trainer(load_config(None, run + [f"method.name={head}"]), tmp_path / head).fit()
        records = [r for r in read_metrics(tmp_path / head / "metrics.jsonl") if "loss" in r]
        assert len(records) == 2
        assert all(("task_top1" in r) == logged for r in records)
        assert all(0.0 <= r.get("task_top1", 0.0) <= 1.0 for r in records)
