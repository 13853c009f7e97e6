"""train.on_nonfinite=skip_step: a batch that makes the loss NaN leaves no trace in what the run learns.

The NaN comes from the data (a batch of NaN pixels injected between the loader and the step), so the
forward pass sees it as a real bad batch would: BatchNorm's running statistics, a momentum network's
statistics and a queue are all in its path."""
import copy
import math

import pytest
import torch

from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer

TINY = ["data.num_train=128", "data.num_test=64", "loader.batch_size=32", "train.epochs=2", "train.log_every=1",
        "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=10", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference", "train.on_nonfinite=skip_step"]
# What a skipped step must leave exactly as it was (the step counter, the schedule, hence the optimizer's
# current lr, and the loader move on: the batch is used up).
LEARNED = ("model", "method", "auxiliaries", "optimizer", "scaler")


def _learned(state: dict) -> dict:
    learned = {part: state[part] for part in LEARNED}
    learned["optimizer"]["param_groups"] = [{k: v for k, v in group.items() if k != "lr"}
                                            for group in learned["optimizer"]["param_groups"]]
    return learned


def _nan_batches(trainer: Trainer, bad_steps: set[int]) -> None:
    """The loader's batch of each 0-based step in `bad_steps` arrives with NaN pixels in every view."""
    batches = trainer._batches

    def injected():
        for batch in batches():
            if trainer.run.step in bad_steps:
                batch.views = [torch.full_like(view, math.nan) for view in batch.views]
            yield batch
    trainer._batches = injected


def _equal(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("method", ["contrastive", "byol", "moco", "svm"])
def test_a_nan_batch_under_skip_step_leaves_no_trace(tmp_path, method):
    """Before the fix the NaN batch's forward wrote NaN into 42 BatchNorm buffers and the run stopped at
    the next save with "the weights became non-finite"; svm's QP failed on the NaN support with "index -1
    is out of bounds" instead of returning the NaN loss the guard drops."""
    extra = {"moco": ["method.moco.queue_size=128"]}.get(method, [])
    trainer = Trainer(load_config(None, TINY + [f"method.name={method}", "task.rotation_p=0.5",
                                                "task.rotation_weight=0.5"] + extra), tmp_path)
    _nan_batches(trainer, {2})
    seen = {}
    step = trainer.train_step

    def watched(task):
        if trainer.run.step == 2:
            seen["before"] = copy.deepcopy(trainer.state.capture())
        step(task)
        if trainer.run.step == 3:
            seen["after"] = copy.deepcopy(trainer.state.capture())
    trainer.train_step = watched
    result = trainer.fit()
    before, after = seen["before"], seen["after"]
    assert any(k.endswith("running_mean") for k in before["model"])    # the buffers at risk are there
    _equal(_learned(before), _learned(after))
    assert after["guard"]["skipped"] == before["guard"]["skipped"] + 1 == 1
    assert after["run"]["step"] == before["run"]["step"] + 1
    assert result.steps == 8 and math.isfinite(result.knn_top1)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert all(torch.isfinite(t).all() for part in ("model", "method") for t in saved[part].values()
               if t.is_floating_point())


def test_resuming_at_a_non_log_step_whose_next_step_is_skipped(tmp_path, crash_after_first_checkpoint, capsys):
    """The checkpoint at step 3 sits inside a log interval (log_every=2); the first step after the resume
    (step 4, a log step) is skipped. Before the fix the log read the last trained task, which a resumed
    process never had: AttributeError '_last_task'. The resumed run logs what the straight run logs."""
    overrides = TINY + ["train.log_every=2", "train.ckpt_every=3", "train.max_steps=6"]
    run = tmp_path / "run"
    crash_after_first_checkpoint(Trainer(load_config(None, overrides), run))
    resumed = Trainer(load_config(run / "config.yaml"), run, resume=True)
    _nan_batches(resumed, {3})
    resumed.fit()
    straight = Trainer(load_config(None, overrides), tmp_path / "straight")
    _nan_batches(straight, {3})
    straight.fit()
    strip = lambda path: [{k: v for k, v in r.items() if k not in ("images_per_s", "step_ms", "data_wait_share")}  # noqa: E731
                          for r in read_metrics(path)]
    records = strip(run / "metrics.jsonl")
    assert records == strip(tmp_path / "straight" / "metrics.jsonl")
    at_4 = next(r for r in records if r["step"] == 4 and "loss" in r)
    assert at_4["skipped_steps"] == 1 and "task_top1" not in at_4 and at_4["loss"] is not None
