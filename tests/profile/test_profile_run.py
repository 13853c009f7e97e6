"""`fastssl profile` on the real training step: a slow loader reads input-bound, a slow head tops the
stages, the stages add up to the step, the trace names every stage, bad arguments fail first."""
import json
import time

import pytest

from fastssl import methods as methods_mod
from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import STEP_STAGES, Trainer
from fastssl.loaders import factory
from fastssl.loaders.stages import LOADER_WAIT
from fastssl.loaders.tensor_backend import TensorLoader
from fastssl.methods import Method, methods, register
from fastssl.profile.run import profile_backend

TINY = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "model.projector_out=16",
        "model.projector_hidden=32", "train.device=cpu", "train.precision=fp32", "augment.impl=reference",
        "knn.k=5", "knn.every_epochs=0"]
SLEEP_S = 0.25


class SleepyLoader(TensorLoader):
    """The tensor backend, waiting SLEEP_S for every batch before producing it (a slow input pipeline)."""

    def batch(self, epoch, batch):
        time.sleep(SLEEP_S)
        return super().batch(epoch, batch)


class SlowHead(Method):
    """A toy loss (no settings: the base's) that takes SLEEP_S longer than it needs."""

    @classmethod
    def build(cls, settings, ctx):
        return cls()

    def forward(self, z, layout, targets=None):
        time.sleep(SLEEP_S)
        return z.float().pow(2).mean()


def test_a_slow_loader_is_input_bound_with_its_wait_measured(tmp_path, monkeypatch):
    monkeypatch.setitem(factory.TRAIN_BACKENDS, "tensor", SleepyLoader)
    result = profile_backend(load_config(None, TINY), "tensor", steps=4, warmup=1, sync=False,
                             run_dir=tmp_path / "run", trace=None)
    from fastssl.profile.report import judge

    judge([result], cores=2)
    wait = next(s for s in result.stages if s.name == LOADER_WAIT)
    assert SLEEP_S * 1000 <= wait.median_ms <= 1.1 * SLEEP_S * 1000
    assert result.verdict.startswith("input-bound")
    assert sum(s.share for s in result.stages) == pytest.approx(1.0)


def test_a_slow_head_is_the_top_stage_and_the_trace_names_every_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(methods_mod, "_REGISTRY", dict(methods()))
    register("slow_head")(SlowHead)
    trace = tmp_path / "trace.json"
    result = profile_backend(load_config(None, TINY + ["method.name=slow_head"]), "tensor", steps=3, warmup=1,
                             sync=False, run_dir=tmp_path / "run", trace=trace)
    top = max(result.stages, key=lambda s: s.share)
    assert top.name == "head" and top.median_ms >= SLEEP_S * 1000
    # The stages add up to the wall time of the steps (profile_backend checks it within its tolerance).
    assert abs(result.marked_ms_per_step - result.wall_ms_per_step) <= 0.05 * result.wall_ms_per_step
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {LOADER_WAIT, "augment", *STEP_STAGES} <= names


def test_every_run_logs_its_data_wait_share_and_step_time(tmp_path, monkeypatch):
    monkeypatch.setitem(factory.TRAIN_BACKENDS, "tensor", SleepyLoader)
    Trainer(load_config(None, TINY + ["train.max_steps=4", "train.log_every=2"]), tmp_path).fit()
    logged = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(logged) == 2
    for record in logged:
        assert 0.3 < record["data_wait_share"] < 1
        assert record["step_ms"] >= SLEEP_S * 1000


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps=0: must be in [1, 100000]"),
    (["--backends", "tensor,tpu"], "--backends: 'tpu' is not a backend"),
])
def test_bad_arguments_fail_before_any_work(argv, message, tmp_path, capsys):
    assert main(["profile", "--out", str(tmp_path / "p"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_command_writes_its_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["profile", "--steps", "2", "--warmup", "0", "--out", str(out), *[a for s in TINY for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert "| stage | median ms |" in printed and "Verdict:" in printed
    data = json.loads((out / "profile.json").read_text())
    (tensor,) = data["profiles"]
    assert tensor["backend"] == "tensor" and tensor["steps"] == 2
    assert sum(s["share"] for s in tensor["stages"]) == pytest.approx(1.0)
    assert (out / "profile.md").read_text().strip() in printed.strip()
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_multi_crop_run_names_its_views_and_counts_images_not_views(tmp_path):
    """2 global 32 px views + 2 local 16 px views: the profile names both sizes, and images/s is the
    16 images of a batch per step's wall time (counting the 64 views would give 4x)."""
    crops = ["loader.views=4", "task.n_query=3",
             "augment.crops=[{views: 2, size: 32, scale: [0.14, 1]}, {views: 2, size: 16, scale: [0.05, 0.14]}]"]
    result = profile_backend(load_config(None, TINY + crops), "tensor", steps=2, warmup=1, sync=False,
                             run_dir=tmp_path / "run", trace=None)
    assert result.views == "2x32px+2x16px" and result.batch_size == 16
    assert result.images_per_s == pytest.approx(16 * 1000 / result.wall_ms_per_step)
    from fastssl.profile.report import markdown

    assert "over 2 steps of 16 images, views 2x32px+2x16px;" in markdown([result], ["# t"])
