"""BYOL (method.name=byol): loss at the paper's scale against float64 by hand, the optimizer settings that
repeat the earlier half-scale loss's updates, the EMA target and its schedule, exact resume."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fastssl.checkpoint import load_checkpoint
from fastssl.config import ConfigError, OptimConfig, load_config
from fastssl.engine import trainer as trainer_mod
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl import methods
from fastssl.methods import MethodContext, build_method
from fastssl.methods.byol import BYOLHead, byol_loss, momentum_at
from fastssl.models import build_model
from fastssl.optim import build_optimizer
from fastssl.task.builder import TaskBatch
from fastssl.task.layout import TaskLayout


def _resume_run() -> list[str]:
    """RESUME_RUN of tests/engine/test_train_e2e.py (loaded by path: tests is not a package)."""
    spec = importlib.util.spec_from_file_location("_train_e2e", Path(__file__).parent / "engine" / "test_train_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RESUME_RUN


BYOL_RUN = _resume_run() + ["method.name=byol", "method.loss_impl=reference", "augment.impl=reference",
                         "knn.every_epochs=0"]


def _explicit_loss(p: torch.Tensor, t: torch.Tensor, n_views: int) -> float:
    """BYOL's paper loss by loops in float64: for an image and two views v, w the symmetrised sum L + L~ of
    the normalised MSEs ||p_v/|p_v| - t_w/|t_w| ||^2 + ||p_w/|p_w| - t_v/|t_v| ||^2, averaged over the
    images and the unordered view pairs (for two views, the paper's L + L~)."""
    p, t = p.detach().double(), t.detach().double()
    batch = p.shape[0] // n_views

    def mse(a, b):
        return float(((a / a.norm() - b / b.norm()) ** 2).sum())

    total, count = 0.0, 0
    for i in range(batch):
        for v in range(n_views):
            for w in range(v + 1, n_views):
                pv, pw, tv, tw = p[v * batch + i], p[w * batch + i], t[v * batch + i], t[w * batch + i]
                total += mse(pv, tw) + mse(pw, tv)
                count += 1
    return total / count


@pytest.mark.parametrize("n_views", [2, 3])
def test_loss_equals_explicit_float64_pairs(n_views):
    g = torch.Generator().manual_seed(n_views)
    p = torch.randn(n_views * 5, 7, generator=g)
    t = torch.randn(n_views * 5, 7, generator=g, requires_grad=True)
    layout = TaskLayout(1, n_views - 1)
    loss = byol_loss(p, t, layout)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(_explicit_loss(p, t, n_views), rel=1e-6, abs=1e-6)
    assert float(byol_loss(p.double(), t.double(), layout)) == pytest.approx(_explicit_loss(p, t, n_views),
                                                                              rel=1e-12, abs=1e-12)
    # The head: the predictor's output against the target's projections; no gradient reaches the target.
    head = build_method(load_config(None, ["method.name=byol", "method.byol.predictor_hidden=11"]).method,
                        MethodContext(7))
    assert isinstance(head, BYOLHead)
    z = torch.randn(n_views * 5, 7, generator=g, requires_grad=True)
    loss = head(z, layout, t)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(_explicit_loss(head.predictor(z).detach(), t.detach(), n_views), rel=1e-6)
    assert t.grad is None and z.grad is not None and z.grad.abs().sum() > 0


def _tiny_byol_steps(optim: dict, scale: float, steps: int = 3) -> dict[str, torch.Tensor]:
    """Online network, predictor and target after `steps` updates by the loss x `scale` with the optimizer
    `optim` (width-1/8 ResNet-18, 16 px, batch 8, two views; the same seeds every call)."""
    cfg = load_config(None, ["method.name=byol", "model.width=0.125", "model.projector_hidden=32",
                             "model.projector_out=16"])
    torch.manual_seed(0)
    online = build_model(cfg.model, True, image_size=16)
    head = build_method(cfg.method, MethodContext(16, 32, online=online, total_steps=steps))
    optimizer = build_optimizer(OptimConfig(**optim), nn.ModuleList([online, head]), 8)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
        task = TaskBatch(views, views, TaskLayout(1, 1), None)
        loss = scale * head(online(views)[1], task.layout, head.targets(task))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        head.after_step(step)
    return {**online.state_dict(), **{f"method.{k}": v for k, v in head.state_dict().items()}}


# optimizer: settings with the earlier loss (half the paper's), settings with the paper's that repeat them
EQUIVALENT = {
    "lars": ({"lr": 1.0, "weight_decay": 0.05, "trust_coefficient": 0.001},
             {"lr": 0.5, "weight_decay": 0.1, "trust_coefficient": 0.002}),
    "sgd": ({"lr": 0.12, "weight_decay": 5e-4}, {"lr": 0.06, "weight_decay": 1e-3}),
}


@pytest.mark.parametrize("name", EQUIVALENT)
def test_the_paper_scale_with_converted_settings_repeats_the_earlier_loss_updates(name):
    """The earlier loss is half this one (scale 1/2). LARS (BYOL's configs' optimizer): half lr, twice weight
    decay and trust coefficient (the trust ratio cancels the gradient's scale only on the adapted weights;
    biases and BN parameters step by lr x g); SGD (the peers' recipe): half lr, twice weight decay. Every
    scaling is by 2, exact in floating point: the weights, predictor and target are bitwise equal."""
    old, new = EQUIVALENT[name]
    earlier, paper = _tiny_byol_steps({"name": name, **old}, 0.5), _tiny_byol_steps({"name": name, **new}, 1.0)
    assert earlier.keys() == paper.keys()
    for key, value in earlier.items():
        assert torch.equal(paper[key], value), key


def test_lars_with_twice_the_weight_decay_alone_repeats_only_the_adapted_weights():
    """Twice the weight decay at the same lr keeps LARS's step of every weight matrix (trust x (2 g + 2 wd w)
    = trust / 2 x 2 (g + wd w)), but the excluded BN parameters and biases step by lr x 2 g: one step."""
    old, _ = EQUIVALENT["lars"]
    earlier = _tiny_byol_steps({"name": "lars", **old}, 0.5, steps=1)
    paper = _tiny_byol_steps({"name": "lars", **old, "weight_decay": 2 * old["weight_decay"]}, 1.0, steps=1)
    online = [k for k, v in earlier.items() if v.is_floating_point() and "target." not in k]
    weights, gammas = [k for k in online if earlier[k].ndim > 1], [k for k in online if earlier[k].ndim == 1
                                                                    and k.endswith("weight")]
    assert len(weights) > 20
    for key in weights:
        assert torch.equal(paper[key], earlier[key]), key
    start = _tiny_byol_steps({"name": "lars", **old}, 0.5, steps=0)
    moved = [k for k in gammas if not torch.equal(earlier[k], start[k])]   # not behind a zero-init residual BN
    assert len(moved) > 10
    for key in moved:   # moved twice as far
        torch.testing.assert_close(paper[key] - start[key], 2 * (earlier[key] - start[key]), rtol=1e-4, atol=0)


def test_momentum_schedule_goes_from_base_to_one_by_a_cosine():
    base, total = 0.996, 1000
    assert momentum_at(0, total, base) == pytest.approx(0.996, abs=1e-15)
    assert momentum_at(total // 2, total, base) == pytest.approx(1 - 0.004 / 2, abs=1e-15)
    assert momentum_at(total, total, base) == pytest.approx(1.0, abs=1e-15)
    assert momentum_at(250, total, base) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-15)


def test_config_rules():
    with pytest.raises(ConfigError, match=r"method.byol.momentum=1.5: must be in \[0, 1\]"):
        methods.check(load_config(None, ["method.name=byol", "method.byol.momentum=1.5"]))
    with pytest.raises(ConfigError, match="method.byol.predictor_hidden=-1: must be >= 0"):
        methods.check(load_config(None, ["method.name=byol", "method.byol.predictor_hidden=-1"]))


def test_predictor_width_defaults_to_the_projectors_hidden_width():
    cfg = load_config(None, ["method.name=byol", "model.projector_hidden=24", "model.projector_out=8"])
    head = build_method(cfg.method, MethodContext(8, hidden_dim=24))
    assert head.predictor[0].weight.shape == (24, 8)


def test_step_updates_the_target_by_ema_and_trains_only_the_online_side(tmp_path, monkeypatch):
    cfg = load_config(None, BYOL_RUN + ["train.max_steps=10", "method.byol.momentum=0.9",
                                        "task.rotation_p=0.5"])
    trainer = Trainer(cfg, tmp_path)
    target, online = trainer.method.target, trainer.model
    # Target starts as a copy of the online encoder + projector; predictor in the optimizer, target not.
    for (name, a), b in zip(online.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in trainer.method.predictor.parameters())
    assert len(list(trainer.method.predictor.parameters())) == 5  # 2 weights, BN weight + bias, last bias
    assert not any(id(p) in optimized for p in target.parameters())
    assert all(not p.requires_grad for p in target.parameters())

    batches = iter(trainer.loader)
    for k in range(2):
        before = [p.detach().double().clone() for p in target.parameters()]
        batch = next(batches)
        trainer.train_step(trainer.tasks.build(batch.views, batch.index, 0, k))
        tau = momentum_at(k, trainer.total_steps, 0.9)
        assert tau == pytest.approx(1 - 0.1 * (math.cos(math.pi * k / 10) + 1) / 2)
        for (name, t), o, t0 in zip(target.named_parameters(), online.parameters(), before):
            assert t.grad is None, name
            expected = tau * t0 + (1 - tau) * o.detach().double()
            torch.testing.assert_close(t.detach().double(), expected, rtol=0, atol=1e-6, msg=name)
            if t.ndim > 1:  # conv and linear weights all move; the target lags behind them
                assert not torch.equal(t, o), f"{name}: target equals the online weights after a step"
    assert all(p.grad is not None for p in trainer.method.predictor.parameters())

    # The kNN monitor reads the online encoder.
    seen = []
    monkeypatch.setattr(trainer_mod, "knn_top1", lambda encoder, *args: seen.append(encoder) or 0.5)
    trainer._evaluate(0)
    assert seen == [online.encoder]


def test_resume_is_exact_for_online_and_target(tmp_path, crash_after_first_checkpoint):
    """8 steps straight == 4 steps, checkpoint, a crash, resume (with task rotation on)."""
    cfg = load_config(None, BYOL_RUN + ["train.max_steps=8", "train.ckpt_every=4", "task.rotation_p=0.5"])
    Trainer(cfg, tmp_path / "straight").fit()

    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["run"]["step"] == 4
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()

    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert a["run"]["step"] == b["run"]["step"] == 8
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"
    target = {k.removeprefix("target."): v for k, v in a["method"].items() if k.startswith("target.")}
    assert target.keys() == a["model"].keys()
    assert not any(torch.equal(target[k], a["model"][k]) for k in a["model"] if k.endswith("weight"))

    def losses(run):
        return [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]

    assert len(losses("straight")) == 8 and losses("resumed") == losses("straight")


def test_short_run_loss_decreases(tmp_path):
    cfg = load_config(None, BYOL_RUN + ["train.max_steps=20"])
    Trainer(cfg, tmp_path).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.2, losses
