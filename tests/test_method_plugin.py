"""A method is one plug-in: registered from this file alone, it trains, logs, checkpoints and resumes
through the trainer, which names no method (nor does the task builder or the benchmark harness)."""
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastssl.checkpoint import load_checkpoint
from fastssl.config import ConfigError, load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl import methods as methods_mod
from fastssl.loaders.rules import require
from fastssl.methods import Method, check, methods, register

ROOT = Path(__file__).resolve().parents[1]
RUN = ["method.name=views_agree", "method.views_agree.weight=0.5", "train.max_steps=4", "train.log_every=1", "train.device=cpu",
       "train.precision=fp32", "data.num_train=64", "data.num_test=32", "loader.batch_size=16",
       "knn.every_epochs=0", "knn.k=5", "augment.impl=reference", "model.projector_out=16"]


class ViewsAgree(Method):
    """Pulls each image's unit views to their mean; counts its steps in a buffer (state of its own) via
    the after-step hook."""

    @dataclass
    class Settings:             # its config section: method.views_agree.weight
        weight: float = 1.0

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))
        self.seen_rows: list[torch.Tensor] = []

    @classmethod
    def check(cls, settings, cfg, world):
        require(settings.weight > 0, "method.views_agree.weight", settings.weight, "must be > 0")

    @classmethod
    def build(cls, settings, ctx):
        return cls(settings.weight)

    def forward(self, z, layout, targets=None):
        self.seen_rows.append(z.detach().clone())
        views = F.normalize(z.float(), dim=1).view(layout.n_views, layout.batch(z, self.name), -1)
        return self.weight * (views - views.mean(0)).pow(2).sum(-1).mean()

    def after_step(self, step):
        self.steps_seen += 1


@pytest.fixture
def views_agree(monkeypatch):
    """ViewsAgree registered for one test: the registry is the process's, shared with every other test."""
    monkeypatch.setattr(methods_mod, "_REGISTRY", dict(methods()))
    register("views_agree")(ViewsAgree)


def views_agree_loss(z: torch.Tensor, n_views: int) -> float:
    """The same loss by loops over images and views, in float64."""
    z = z.double()
    batch = z.shape[0] // n_views
    total = 0.0
    for i in range(batch):
        rows = [z[v * batch + i] / z[v * batch + i].norm() for v in range(n_views)]
        mean = sum(rows) / n_views
        total += sum(float(((r - mean) ** 2).sum()) for r in rows) / n_views
    return total / batch


def test_a_method_registered_here_trains_logs_and_resumes_exactly(tmp_path, crash_after_first_checkpoint, views_agree):
    assert "views_agree" in methods()
    cfg = load_config(None, RUN)
    trainer = Trainer(cfg, tmp_path / "straight")
    trainer.fit()
    assert int(trainer.method.steps_seen) == 4
    logged = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    expected = [0.5 * views_agree_loss(z, 2) for z in trainer.method.seen_rows]
    assert len(logged) == 4 and logged == pytest.approx(expected, rel=1e-5)

    resumed_cfg = load_config(None, RUN + ["train.ckpt_every=2"])
    crash_after_first_checkpoint(Trainer(resumed_cfg, tmp_path / "resumed"))
    Trainer(resumed_cfg, tmp_path / "resumed", resume=True).fit()
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert int(b["method"]["steps_seen"]) == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_its_config_section_is_typed_and_checked_by_its_own_settings(views_agree):
    with pytest.raises(ConfigError, match="method.views_agree.weight=-1.0: must be > 0"):
        check(load_config(None, RUN + ["method.views_agree.weight=-1"]))
    with pytest.raises(ConfigError, match="method.views_agree.weight='heavy': must be a number"):
        check(load_config(None, RUN + ["method.views_agree.weight=heavy"]))
    with pytest.raises(ConfigError, match="unknown key 'method.views_agree.wieght'"):
        check(load_config(None, RUN + ["method.views_agree.wieght=1"]))


def test_shared_code_names_no_method():
    """The trainer, the task builder and the benchmark harness know methods only by the contract."""
    names = list(methods())
    for path in ("fastssl/engine/trainer.py", "fastssl/task/builder.py", "fastssl/task/layout.py",
                 "fastssl/config.py", "fastssl/methods/__init__.py", "fastssl/methods/base.py",
                 "bench/harness.py", "bench/train_throughput.py"):
        text = (ROOT / path).read_text().lower()
        found = [name for name in names if re.search(rf"\b{name}\b", text)]
        assert not found, f"{path} names {found}"
