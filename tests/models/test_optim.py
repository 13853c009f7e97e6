"""LARS against a hand-written float64 version of its formula, the warm-up + cosine schedule, and the
weight-decay exclusion of biases and BN parameters for every optimizer."""
import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from fastssl.config import ModelConfig, OptimConfig
from fastssl.models import build_model
from fastssl.optim import LARS, build_optimizer, build_scheduler, lr_at, param_groups

MOMENTUM, WD, ETA = 0.9, 0.1, 0.5


def reference_lars(weights, grads_per_step, lrs, kinds):
    """The docstring's formula in float64 numpy, one tensor at a time.

    kinds[i]: "lars" (decay + trust), "lars_no_wd" (trust, weight_decay 0), "exclude" (momentum SGD).
    A gradient of None leaves the tensor and its momentum alone.
    """
    w = [x.numpy().astype(np.float64) for x in weights]
    v = [np.zeros_like(x) for x in w]
    for grads, lr in zip(grads_per_step, lrs):
        for i, (g, kind) in enumerate(zip(grads, kinds)):
            if g is None:
                continue
            g = g.numpy().astype(np.float64)
            if kind == "exclude":
                v[i] = MOMENTUM * v[i] + lr * g
            else:
                if kind == "lars":
                    g = g + WD * w[i]
                w_norm, g_norm = math.sqrt((w[i] ** 2).sum()), math.sqrt((g ** 2).sum())
                trust = ETA * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
                v[i] = MOMENTUM * v[i] + lr * trust * g
            w[i] = w[i] - v[i]
    return w, v


def lars_case(steps: int):
    """Tensors covering every branch, grads for each step, and the step's learning rate."""
    gen = torch.Generator().manual_seed(0)
    shapes_kinds = [
        ((6, 5), "lars"),
        ((4, 3, 3, 3), "lars"),          # conv weight, kept channels_last below
        ((3, 4), "lars"),                # zero gradient: g' = wd * w, trust = eta / wd
        ((5, 2), "lars"),                # zero weights: ||w|| = 0, trust = 1
        ((2, 3), "lars_no_wd"),          # zero gradient without decay: ||g'|| = 0, trust = 1
        ((7,), "exclude"),               # bias
        ((4,), "exclude"),               # BN gamma
        ((3, 3), "lars"),                # never gets a gradient
    ]
    weights = [torch.randn(s, generator=gen) for s, _ in shapes_kinds]
    weights[1] = weights[1].contiguous(memory_format=torch.channels_last)
    weights[3].zero_()
    grads_per_step = []
    for step in range(steps):
        grads = [torch.randn(s, generator=gen) for s, _ in shapes_kinds]
        grads[2].zero_()
        grads[7] = None
        if step == 0:  # momentum built up first, so the zero-gradient step below still moves
            grads[4] = torch.randn(2, 3, generator=gen)
        else:
            grads[4] = torch.zeros(2, 3)
        grads_per_step.append(grads)
    lrs = [0.5, 1.0, 0.8, 0.3, 0.6][:steps]
    return weights, grads_per_step, lrs, [k for _, k in shapes_kinds]


def make_lars(params):
    groups = [
        {"params": params[0:4], "weight_decay": WD},
        {"params": params[4:5], "weight_decay": 0.0},
        {"params": params[5:7], "weight_decay": 0.0, "lars_exclude": True},
        {"params": params[7:8], "weight_decay": WD},
    ]
    return LARS(groups, lr=0.0, momentum=MOMENTUM, trust_coefficient=ETA)


def run_lars(opt, params, grads_per_step, lrs):
    for grads, lr in zip(grads_per_step, lrs):
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()


@pytest.mark.parametrize("steps", [1, 4])
def test_lars_matches_float64_reference(steps):
    weights, grads_per_step, lrs, kinds = lars_case(steps)
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = make_lars(params)
    run_lars(opt, params, grads_per_step, lrs)
    ref_w, ref_v = reference_lars(weights, grads_per_step, lrs, kinds)
    for i, (p, w, v) in enumerate(zip(params, ref_w, ref_v)):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-5, atol=1e-6, err_msg=f"tensor {i}")
        if i == 7:
            assert torch.equal(p.detach(), weights[7]) and p not in opt.state
        else:
            np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(), v, rtol=1e-5, atol=1e-6)
    assert params[1].is_contiguous(memory_format=torch.channels_last)


def test_lars_first_step_by_hand():
    """One tensor, numbers small enough to check on paper: w = (3, 4), g = (0, 1), wd = 0.1, eta = 0.5."""
    w = nn.Parameter(torch.tensor([3.0, 4.0]).reshape(1, 2))
    opt = LARS([w], lr=2.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.5)
    w.grad = torch.tensor([[0.0, 1.0]])
    opt.step()
    g = torch.tensor([0.3, 1.4])                       # g + wd * w
    trust = 0.5 * 5.0 / math.sqrt(0.3 ** 2 + 1.4 ** 2)
    torch.testing.assert_close(w.detach().reshape(2), torch.tensor([3.0, 4.0]) - 2.0 * trust * g)


def test_lars_state_dict_round_trip_reproduces_next_steps():
    weights, grads_per_step, lrs, _ = lars_case(5)
    params = [nn.Parameter(w.clone()) for w in weights]
    opt = make_lars(params)
    run_lars(opt, params, grads_per_step[:2], lrs[:2])

    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as fastssl.checkpoint loads it
    resumed = [nn.Parameter(w) for w in saved["params"]]
    resumed_opt = make_lars(resumed)
    resumed_opt.load_state_dict(saved["opt"])

    run_lars(opt, params, grads_per_step[2:], lrs[2:])
    run_lars(resumed_opt, resumed, grads_per_step[2:], lrs[2:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, key", [
    ({"lr": -1.0}, "lr=-1.0"), ({"lr": 1.0, "momentum": 1.0}, "momentum=1.0"),
    ({"lr": 1.0, "weight_decay": -1e-6}, "weight_decay=-1e-06"),
    ({"lr": 1.0, "trust_coefficient": 0.0}, "trust_coefficient=0.0"),
])
def test_lars_rejects_invalid_hyperparameters(kwargs, key):
    with pytest.raises(ValueError, match=key):
        LARS([nn.Parameter(torch.ones(2, 2))], **kwargs)


# -- schedule -----------------------------------------------------------------------------------


def test_schedule_values():
    base, warm, total = 0.8, 10, 110
    assert lr_at(0, base, warm, total) == pytest.approx(base / warm)
    assert lr_at(warm - 1, base, warm, total) == pytest.approx(base)
    assert lr_at(warm, base, warm, total) == pytest.approx(base)
    assert lr_at(warm + (total - warm) // 2, base, warm, total) == pytest.approx(base / 2)
    assert lr_at(total - 1, base, warm, total) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at(total, base, warm, total) == 0.0
    assert lr_at(total + 5, base, warm, total) == 0.0
    values = [lr_at(s, base, warm, total) for s in range(total + 1)]
    assert all(a < b for a, b in zip(values[:warm - 1], values[1:warm]))
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1:]))
    assert all(0.0 <= v <= base for v in values)


def test_schedule_without_warmup_starts_at_base_and_short_run_stops_in_warmup():
    assert lr_at(0, 1.0, 0, 50) == 1.0
    assert lr_at(25, 1.0, 0, 50) == pytest.approx(0.5)
    assert [lr_at(s, 1.0, 10, 3) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.0])


@pytest.mark.parametrize("args, message", [((0, 1.0, -1, 10), "warmup_steps=-1"), ((0, 1.0, 0, 0), "total_steps=0")])
def test_schedule_rejects_invalid_lengths(args, message):
    with pytest.raises(ValueError, match=message):
        lr_at(*args)


def sgd_on(values):
    return torch.optim.SGD([nn.Parameter(torch.tensor(values))], lr=0.4)


def test_scheduler_sets_the_lr_of_every_step():
    opt = sgd_on([1.0])
    sched = build_scheduler(opt, warmup_steps=3, total_steps=12)
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, 0.4, 3, 12))
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_scheduler_state_dict_round_trip():
    opt = sgd_on([1.0])
    sched = build_scheduler(opt, warmup_steps=3, total_steps=12)
    for _ in range(5):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["sched"]["lr_lambdas"] == [{"warmup_steps": 3, "total_steps": 12}]

    opt2 = sgd_on([1.0])
    sched2 = build_scheduler(opt2, warmup_steps=3, total_steps=12)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    for step in range(5, 12):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, 0.4, 3, 12))
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


# -- optimizers and their parameter groups ----------------------------------------------------------


def tiny_model():
    return build_model(ModelConfig(arch="resnet18", width=0.125, projector_hidden=16, projector_out=8))


def test_param_groups_split_by_ndim():
    model = tiny_model()
    groups = param_groups(model, 1e-4)
    assert [(g["weight_decay"], g["lars_exclude"]) for g in groups] == [(1e-4, False), (0.0, True)]
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert not decay & no_decay
    assert decay | no_decay == {id(p) for p in model.parameters()}
    named = dict(model.named_parameters())
    assert id(named["encoder.stem.1.weight"]) in no_decay      # BN gamma
    assert id(named["projector.3.bias"]) in no_decay            # last linear's bias
    assert id(named["encoder.stem.0.weight"]) in decay          # conv
    assert id(named["projector.0.weight"]) in decay             # linear


def test_decay_norm_and_bias_steps_as_plain_torch_sgd_over_all_parameters():
    model = tiny_model().to(memory_format=torch.contiguous_format)
    reference = copy.deepcopy(model)
    ours = build_optimizer(OptimConfig(name="sgd", lr=0.1, weight_decay=0.05, decay_norm_and_bias=True), model)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        for net, opt in ((model, ours), (reference, plain)):
            opt.zero_grad()
            net(x)[1].square().sum().backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert [g["weight_decay"] for g in param_groups(model, 0.05, decay_norm_and_bias=True)] == [0.05, 0.05]


def test_param_groups_skip_frozen_and_empty():
    model = nn.Linear(3, 2, bias=False)
    assert [len(g["params"]) for g in param_groups(model, 0.1)] == [1]
    model.weight.requires_grad_(False)
    assert param_groups(model, 0.1) == []


@pytest.mark.parametrize("name, factor", [
    ("sgd", lambda lr, wd, eta: 1 - lr * wd),
    ("adamw", lambda lr, wd, eta: 1 - lr * wd),
    ("lars", lambda lr, wd, eta: 1 - lr * eta),  # g' = wd * w, trust = eta / wd
])
def test_weight_decay_only_on_weights(name, factor):
    """With all gradients zero, one step only decays: weights shrink by a known factor, biases and
    BN parameters stay exactly as they were."""
    cfg = OptimConfig(name=name, lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    model = tiny_model()
    opt = build_optimizer(cfg, model)
    before = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    expected = factor(cfg.lr, cfg.weight_decay, cfg.trust_coefficient)
    for (name_, p), p0 in zip(model.named_parameters(), before.parameters()):
        if p.ndim <= 1:
            assert torch.equal(p, p0), name_
        else:
            torch.testing.assert_close(p, p0 * expected, rtol=1e-6, atol=1e-7, msg=name_)


def test_optimizer_settings():
    model = tiny_model()
    sgd = build_optimizer(OptimConfig(name="sgd", momentum=0.8, lr=0.3), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"], sgd.defaults["lr"]) == (0.8, False, 0.3)
    adamw = build_optimizer(OptimConfig(name="adamw", weight_decay=0.05), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["foreach"] and not adamw.defaults["fused"]  # CPU parameters: no fused kernel
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    lars = build_optimizer(OptimConfig(name="lars", trust_coefficient=0.002), model)
    assert [(g["lars_exclude"], g["trust_coefficient"]) for g in lars.param_groups] == [(False, 0.002), (True, 0.002)]


def test_unknown_optimizer_names_key_and_choices():
    with pytest.raises(ValueError, match=r"optim\.name='adam': must be one of auto, lars, sgd, adamw"):
        build_optimizer(OptimConfig(name="adam"), tiny_model())
