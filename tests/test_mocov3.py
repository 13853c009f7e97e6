"""MoCo v3: the loss and its gradient against the paper's Algorithm 1 written with torch's cross-entropy
in float64 (two views, three views, a mixed query), the config's rules, and a run that trains, resumes
bitwise and exports both networks."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl import methods
from fastssl.checkpoint import load_checkpoint
from fastssl.config import ConfigError, load_config
from fastssl.engine.trainer import Trainer
from fastssl.export.exporter import export
from fastssl.methods.mocov3 import mocov3_loss
from fastssl.task.layout import QueryMix, TaskLayout

ROOT = Path(__file__).resolve().parents[1]
B, D, TAU = 5, 4, 0.7


def _ctr(q, k, targets):
    """Algorithm 1's ctr: cross-entropy of normalised q against normalised k over tau, times 2 tau; targets
    a class per row or a soft distribution (a mixed query)."""
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / TAU
    return F.cross_entropy(logits, targets) * 2 * TAU


def _inputs(views, seed=0):
    torch.manual_seed(seed)
    return (torch.randn(views * B, D, dtype=torch.float64).requires_grad_(),
            torch.randn(views * B, D, dtype=torch.float64))


def _check(loss, expected, p):
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(loss, p)[0], torch.autograd.grad(expected, p)[0],
                               rtol=1e-10, atol=1e-12)


def test_two_views_give_the_papers_symmetric_loss():
    p, k = _inputs(2)
    images = torch.arange(B)
    expected = _ctr(p[:B], k[B:], images) + _ctr(p[B:], k[:B], images)
    _check(mocov3_loss(p, k, TaskLayout(1, 1), TAU), expected, p)


def test_three_views_give_twice_the_mean_over_ordered_pairs():
    p, k = _inputs(3, seed=1)
    blocks_p, blocks_k, images = p.unflatten(0, (3, B)), k.unflatten(0, (3, B)), torch.arange(B)
    pairs = [(v, w) for v in range(3) for w in range(3) if v != w]
    expected = 2 * sum(_ctr(blocks_p[v], blocks_k[w], images) for v, w in pairs) / len(pairs)
    _check(mocov3_loss(p, k, TaskLayout(1, 2), TAU), expected, p)


def test_a_mixed_query_targets_both_images_keys():
    p, k = _inputs(2, seed=2)
    partner, lam = torch.tensor([3, 0, 4, 1, 2]), 0.3
    soft = lam * F.one_hot(torch.arange(B), B).double() + (1 - lam) * F.one_hot(partner, B).double()
    # the support view (rows < B) is clean; the query view (rows >= B) is mixed
    expected = _ctr(p[:B], k[B:], torch.arange(B)) + _ctr(p[B:], k[:B], soft)
    _check(mocov3_loss(p, k, TaskLayout(1, 1, QueryMix(partner, lam)), TAU), expected, p)


@pytest.mark.parametrize("sets, rule", [
    (["method.mocov3.momentum=1.5"], "method.mocov3.momentum=1.5: must be in [0, 1]"),
    (["method.mocov3.temperature=0"], "method.mocov3.temperature=0.0"),
    (["method.mocov3.predictor_hidden=-1"], "method.mocov3.predictor_hidden=-1"),
])
def test_settings_are_checked_naming_the_key(sets, rule):
    with pytest.raises(ConfigError) as info:
        methods.check(load_config(None, ["method.name=mocov3", *sets]))
    assert str(info.value).startswith(rule)


def test_trains_resumes_bitwise_and_exports_both_networks(tmp_path, crash_after_first_checkpoint):
    cfg = load_config(ROOT / "configs" / "heads" / "mocov3.yaml", [
        "data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.epochs=1", "train.ckpt_every=2",
        "train.precision=fp32", "knn.k=5", "knn.every_epochs=0", "model.projector_hidden=32", "model.projector_out=16"])
    straight = Trainer(cfg, tmp_path / "straight").fit()
    assert straight.steps == 4 and math.isfinite(straight.knn_top1)
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for part in ("model", "method"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    for network in ("online", "target"):
        path, lines = export(tmp_path / "straight", network=network)
        assert path.name == f"{network}_encoder.torchvision.pt" and lines[-1].startswith("check: max abs error 0 ")
    # the momentum encoder moved with the online network but is not it
    online, target = a["model"]["encoder.stem.0.weight"], a["method"]["target.encoder.stem.0.weight"]
    assert not torch.equal(online, target)
