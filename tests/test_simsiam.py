"""SimSiam (method.name=simsiam): the loss against float64 loops, the stop-gradient, the predictor's
width, query mixing refused, the config rules and file, and exact resume."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl import methods
from fastssl.checkpoint import load_checkpoint
from fastssl.config import ConfigError, load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl.methods import MethodContext, build_method
from fastssl.methods.simsiam import SimSiamHead, simsiam_loss
from fastssl.task.layout import QueryMix, TaskLayout

ROOT = Path(__file__).resolve().parents[1]
RUN = ["method.name=simsiam", "data.num_train=128", "data.num_test=32", "loader.batch_size=16", "train.epochs=1",
       "train.log_every=1", "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=5",
       "knn.every_epochs=0", "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16",
       "augment.impl=reference"]


def _explicit_loss(p: torch.Tensor, z: torch.Tensor, n_views: int) -> float:
    """Mean over images i and ordered pairs v != w of -cos(p[v, i], z[w, i]), in float64, by loops."""
    p, z = p.detach().double(), z.detach().double()
    batch = p.shape[0] // n_views
    total, count = 0.0, 0
    for i in range(batch):
        for v in range(n_views):
            for w in range(n_views):
                if v != w:
                    a, b = p[v * batch + i], z[w * batch + i]
                    total -= float(a @ b / (a.norm() * b.norm()))
                    count += 1
    return total / count


def _head(dim: int, *sets: str) -> SimSiamHead:
    cfg = load_config(None, ["method.name=simsiam", *sets])
    methods.check(cfg)
    head = build_method(cfg.method, MethodContext(dim))
    assert isinstance(head, SimSiamHead)
    return head


@pytest.mark.parametrize("n_views", [2, 3])
def test_loss_equals_explicit_float64_pairs(n_views):
    g = torch.Generator().manual_seed(n_views)
    p = torch.randn(n_views * 5, 7, generator=g, dtype=torch.float64)
    z = torch.randn(n_views * 5, 7, generator=g, dtype=torch.float64)
    layout = TaskLayout(1, n_views - 1)
    expected = _explicit_loss(p, z, n_views)
    assert float(simsiam_loss(p, z, layout)) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    loss32 = simsiam_loss(p.float(), z.float(), layout)
    assert loss32.dtype == torch.float32 and float(loss32) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if n_views == 2:   # SimSiam's symmetric form D(p1, z2) / 2 + D(p2, z1) / 2
        d = lambda a, b: -F.cosine_similarity(a, b, dim=1).mean()  # noqa: E731
        assert float(simsiam_loss(p, z, layout)) == pytest.approx(float(d(p[:5], z[5:]) / 2 + d(p[5:], z[:5]) / 2),
                                                                  rel=1e-12)


@pytest.mark.parametrize("n_views", [2, 3])
def test_head_loss_and_stop_gradient(n_views):
    """The head: its predictor's output against the projections themselves, whose target side gets no
    gradient: z's gradient is the one through the predictor alone."""
    g = torch.Generator().manual_seed(10 + n_views)
    head = _head(8, "method.simsiam.predictor_hidden=5")
    z = torch.randn(n_views * 6, 8, generator=g, requires_grad=True)
    layout = TaskLayout(1, n_views - 1)
    loss = head(z, layout)
    (grad,) = torch.autograd.grad(loss, z)
    assert float(loss.detach()) == pytest.approx(_explicit_loss(head.predictor(z).detach(), z, n_views), rel=1e-5)

    # The same loss with the targets an independent constant: identical gradient for z.
    zp = z.detach().clone().requires_grad_()
    target = z.detach().clone().requires_grad_()
    (grad_pred, grad_target) = torch.autograd.grad(simsiam_loss(head.predictor(zp), target, layout), (zp, target),
                                                   allow_unused=True)
    assert grad_target is None
    torch.testing.assert_close(grad, grad_pred, rtol=0, atol=0)
    # Without the stop-gradient z would also be pulled through the target side: a different gradient.
    pn, zn = F.normalize(head.predictor(z), dim=1), F.normalize(z, dim=1)
    batch = z.shape[0] // n_views
    no_stop = -sum((pn[v * batch:(v + 1) * batch] * zn[w * batch:(w + 1) * batch]).sum()
                   for v in range(n_views) for w in range(n_views) if v != w) / (n_views * (n_views - 1) * batch)
    (grad_no_stop,) = torch.autograd.grad(no_stop, z)
    assert float(no_stop.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert (grad_no_stop - grad).abs().max() > 1e-3
    assert all(p.grad is None for p in head.parameters())


def test_predictor_is_a_bottleneck_a_quarter_of_the_projection_by_default():
    assert _head(64).predictor[0].weight.shape == (16, 64)
    head = _head(64, "method.simsiam.predictor_hidden=40")
    assert head.predictor[0].weight.shape == (40, 64) and head.predictor[-1].weight.shape == (64, 40)
    assert isinstance(head.predictor[1], torch.nn.BatchNorm1d) and head.predictor[-1].bias is not None
    assert _head(3).predictor[0].weight.shape == (1, 3)


def test_config_rules_and_query_mixing_refused():
    with pytest.raises(ConfigError, match="method.simsiam.predictor_hidden=-1: must be >= 0"):
        methods.check(load_config(None, ["method.name=simsiam", "method.simsiam.predictor_hidden=-1"]))
    with pytest.raises(ConfigError, match="task.query_mix='cutmix': simsiam cannot mix queries: its targets are "
                                          "the online network's own projections"):
        methods.check(load_config(None, ["method.name=simsiam", "task.query_mix=cutmix"]))
    with pytest.raises(ValueError, match="query mixing is not supported"):
        simsiam_loss(torch.randn(4, 3), torch.randn(4, 3), TaskLayout(1, 1, QueryMix(torch.tensor([1, 0]), 0.5)))
    methods.check(load_config(None, ["method.name=simsiam", "task.rotation_p=0.5", "task.rotation_weight=0.5"]))


@pytest.mark.parametrize("files", [
    ["configs/quickstart.yaml"],
    ["configs/cifar10_jpeg.yaml"],
    ["configs/cifar10_jpeg.yaml", "configs/tricks/task_aug.yaml", "configs/tricks/rot_pred.yaml"],
    ["configs/imagenet_resnet50.yaml", "configs/augment/simclr_imagenet.yaml"],
], ids=["quickstart", "cifar10_jpeg", "cifar10_jpeg+tricks", "imagenet"])
def test_config_file_loads_and_passes_the_methods_check(files, tmp_path):
    sets = [] if files == ["configs/quickstart.yaml"] else [f"data.path={tmp_path}"]
    cfg = load_config([ROOT / f for f in files] + [ROOT / "configs/heads/simsiam.yaml"], sets)
    methods.check(cfg)
    assert (cfg.method.name, cfg.method.settings.predictor_hidden) == ("simsiam", 0)


def test_resume_is_exact_and_the_predictor_trains(tmp_path, crash_after_first_checkpoint):
    """4 steps straight == 2 steps, checkpoint, a crash, resume (with task rotation on)."""
    cfg = load_config(None, RUN + ["train.max_steps=4", "train.ckpt_every=2", "task.rotation_p=0.5"])
    straight = Trainer(cfg, tmp_path / "straight")
    optimized = {id(p) for group in straight.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in straight.method.predictor.parameters())
    initial = [p.detach().clone() for p in straight.method.predictor.parameters()]
    straight.fit()
    assert all(not torch.equal(a, p) for a, p in zip(initial, straight.method.predictor.parameters()))

    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["run"]["step"] == 2
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert a["run"]["step"] == b["run"]["step"] == 4
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"
    assert all(k.startswith("predictor.") for k in a["method"])     # no momentum network, no buffers of its own

    def losses(run):
        return [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]

    assert len(losses("straight")) == 4 and losses("resumed") == losses("straight")
    assert all(-1 <= x <= 1 for x in losses("straight"))
