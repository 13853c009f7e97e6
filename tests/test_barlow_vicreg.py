"""Barlow Twins and VICReg: loss and gradient against the papers' definitions written out element by
element in float64, the mean over view pairs for V > 2, query mixing refused, and a run that trains,
resumes bitwise and exports."""
import itertools
import math
from pathlib import Path

import pytest
import torch

from fastssl.config import ConfigError, load_config
from fastssl.engine.trainer import Trainer
from fastssl.export.exporter import export
from fastssl import methods
from fastssl.methods.barlow_twins import BarlowTwinsHead
from fastssl.methods.vicreg import VICRegHead
from fastssl.checkpoint import load_checkpoint
from fastssl.task.layout import QueryMix, TaskLayout

B, D = 6, 4
ROOT = Path(__file__).resolve().parents[1]


def _barlow_reference(a, b, lambd):
    """Zbontar et al.: C_ij = sum_n za_ni zb_nj / B with za standardised per column (biased variance + 1e-5)."""
    def standardise(x):
        out = torch.empty_like(x)
        for j in range(x.shape[1]):
            mean = sum(x[n, j] for n in range(x.shape[0])) / x.shape[0]
            var = sum((x[n, j] - mean) ** 2 for n in range(x.shape[0])) / x.shape[0]
            for n in range(x.shape[0]):
                out[n, j] = (x[n, j] - mean) / torch.sqrt(var + 1e-5)
        return out
    za, zb = standardise(a), standardise(b)
    loss = 0
    for i in range(a.shape[1]):
        for j in range(a.shape[1]):
            c = sum(za[n, i] * zb[n, j] for n in range(a.shape[0])) / a.shape[0]
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c ** 2)
    return loss


def _vicreg_reference(a, b, sim=25.0, std=25.0, cov=1.0):
    """Bardes et al. (as their code weighs the terms): 25 s(a, b) + 25 (v(a) + v(b)) / 2 + (c(a) + c(b))."""
    n, d = a.shape
    invariance = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance(x):
        total = 0
        for j in range(d):
            mean = sum(x[i, j] for i in range(n)) / n
            var = sum((x[i, j] - mean) ** 2 for i in range(n)) / (n - 1)
            total = total + torch.clamp(1 - torch.sqrt(var + 1e-4), min=0)
        return total / d

    def covariance(x):
        means = [sum(x[i, j] for i in range(n)) / n for j in range(d)]
        total = 0
        for j, k in itertools.permutations(range(d), 2):
            c = sum((x[i, j] - means[j]) * (x[i, k] - means[k]) for i in range(n)) / (n - 1)
            total = total + c ** 2
        return total / d
    return sim * invariance + std * (variance(a) + variance(b)) / 2 + cov * (covariance(a) + covariance(b))


def _heads():
    return {"barlow_twins": (BarlowTwinsHead(0.0051), lambda a, b: _barlow_reference(a, b, 0.0051)),
            "vicreg": (VICRegHead(VICRegHead.Settings()), _vicreg_reference)}


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
@pytest.mark.parametrize("views", [2, 3])
def test_loss_and_gradient_equal_the_papers_definition_in_float64(name, views):
    head, reference = _heads()[name]
    torch.manual_seed(views)
    z = (torch.randn(views * B, D, dtype=torch.float64) * 0.7).requires_grad_()
    loss = head(z, TaskLayout(1, views - 1))
    blocks = z.unflatten(0, (views, B))
    pairs = list(itertools.combinations(range(views), 2))
    expected = sum(reference(blocks[v], blocks[w]) for v, w in pairs) / len(pairs)
    assert loss.dtype == torch.float64 and math.isclose(loss.item(), expected.item(), rel_tol=1e-12)
    got, = torch.autograd.grad(loss, z)
    want, = torch.autograd.grad(expected, z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_barlow_twins_of_standardised_decorrelated_identical_views_is_zero():
    """C = I exactly when both views are the same whitened features: no invariance or redundancy left."""
    x = torch.randn(64, D, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))   # orthonormal columns, each of mean 0 (combinations of centred ones)
    x = q * math.sqrt(64)                    # biased variance 1 per column, and x^T x / 64 = I
    head, _ = _heads()["barlow_twins"]
    z = torch.cat([x, x])
    assert float(head(z, TaskLayout(1, 1))) < 1e-3


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_query_mixing_is_refused_in_the_config_and_the_loss(name):
    with pytest.raises(ConfigError, match=rf"task.query_mix='mixup': {name} compares each image's views in pairs"):
        methods.check(load_config(None, [f"method.name={name}", "task.query_mix=mixup"]))
    head, _ = _heads()[name]
    with pytest.raises(ValueError, match="query mixing is not supported"):
        head(torch.randn(4, 3), TaskLayout(1, 1, QueryMix(torch.tensor([1, 0]), 0.5)))


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_trains_resumes_bitwise_and_exports(name, tmp_path, crash_after_first_checkpoint):
    cfg = load_config(ROOT / "configs" / "heads" / f"{name}.yaml", [
        "data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.epochs=1", "train.ckpt_every=2",
        "train.precision=fp32", "knn.k=5", "knn.every_epochs=0", "model.projector_hidden=32", "model.projector_out=16"])
    assert cfg.method.name == name
    straight = Trainer(cfg, tmp_path / "straight").fit()
    assert straight.steps == 4 and math.isfinite(straight.knn_top1)
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    path, lines = export(tmp_path / "straight")
    assert path.is_file() and lines[-1].startswith("check: max abs error 0 ")
