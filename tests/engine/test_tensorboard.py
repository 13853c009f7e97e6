"""log.tensorboard: the event files hold exactly metrics.jsonl's numbers, also across a resume, read back
with TensorBoard's own reader; without the package a run fails before it starts."""
import importlib.util
import shutil
import sys

import numpy as np
import pytest

from fastssl import compat, methods
from fastssl.cli import main
from fastssl.config import load_config, to_dict
from fastssl.engine.metrics import read_metrics
from fastssl.engine.tensorboard import LOG_DIR, scalars
from fastssl.engine.trainer import CHECKPOINT, Trainer

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="the tensorboard package is not installed (pip install -e '.[dev]')")

# 4 steps per epoch, a kNN score at the start and the end.
TINY = ["data.num_train=128", "data.num_test=64", "loader.batch_size=32", "train.epochs=3", "train.log_every=1",
        "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=10", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference", "log.tensorboard=true"]


def _from_metrics(run) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value as float32)]} of metrics.jsonl's records, in the order written."""
    series: dict[str, list] = {}
    for record in read_metrics(run / "metrics.jsonl"):
        for tag, value in scalars(record).items():
            series.setdefault(tag, []).append((record["step"], float(np.float32(value))))
    return series


def _from_events(run) -> dict[str, list[tuple[int, float]]]:
    """The same, as TensorBoard reads the run's event files (every event kept, restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(run / LOG_DIR), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()[SCALARS]}


def test_scalars_are_tagged_by_record_kind_and_skip_what_is_not_a_finite_number():
    interval = {"step": 7, "epoch": 1, "loss": 2.5, "lr": 0.1, "images_per_s": 300.0, "step_ms": 12.0,
                "task_top1": None, "rotation_loss": float("inf"), "skipped_steps": 2, "note": "x", "flag": True}
    assert scalars(interval) == {"train/loss": 2.5, "train/lr": 0.1, "timing/images_per_s": 300.0,
                                 "timing/step_ms": 12.0, "train/skipped_steps": 2.0}
    assert scalars({"step": 8, "epoch": 2, "knn_top1": 0.25}) == {"eval/knn_top1": 0.25}


@needs_tensorboard
def test_event_files_hold_every_number_of_metrics_jsonl(tmp_path):
    """Also where an attempt killed before its first checkpoint left events behind: a fresh run
    starts metrics.jsonl over, and TensorBoard's view with it."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / LOG_DIR)) as stale:
        for step in (0, 1, 2, 3, 9):
            stale.add_scalar("train/loss", 99.0, step)
    Trainer(load_config(None, TINY + ["train.max_steps=3"]), tmp_path).fit()
    expected = _from_metrics(tmp_path)
    assert {"train/loss", "train/lr", "timing/images_per_s", "eval/knn_top1"} <= set(expected)
    assert [step for step, _ in expected["train/loss"]] == [1, 2, 3]
    assert _from_events(tmp_path) == expected


@needs_tensorboard
@pytest.mark.parametrize("kill_after", [2, 4], ids=["mid-run", "last-step"])
def test_a_resumed_run_shows_each_step_once(tmp_path, monkeypatch, kill_after):
    """A run killed after its checkpoint at `kill_after` had logged all 4 steps and the final kNN (its
    files are the finished run's, its checkpoint the one at that step); the resumed run logs what came
    after the checkpoint again, and a stale event would be a second value at its step. At the last
    step the final kNN score comes after the checkpoint and the step's training record before it."""
    save, kept = Trainer.save, tmp_path / "kept.pt"
    run = tmp_path / "run"

    def save_and_keep(trainer):
        save(trainer)
        if trainer.run.step == kill_after and not kept.exists():
            shutil.copy(run / CHECKPOINT, kept)
    monkeypatch.setattr(Trainer, "save", save_and_keep)
    cfg = TINY + ["train.max_steps=4", "train.ckpt_every=2"]
    Trainer(load_config(None, cfg), run).fit()
    shutil.copy(kept, run / CHECKPOINT)

    Trainer(load_config(None, cfg), run, resume=True).fit()
    expected = _from_metrics(run)
    assert [step for step, _ in expected["train/loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in expected["eval/knn_top1"]] == [0, 4]
    assert _from_events(run) == expected


def test_a_resume_may_turn_tensorboard_on_also_from_a_checkpoint_older_than_the_setting():
    before, cfg = load_config(None), load_config(None, ["log.tensorboard=true"])
    methods.check(before)       # the method's section typed, as a trained run's checkpoint holds it
    saved = to_dict(before)
    assert compat.check(saved, cfg, "last.pt") == ["log.tensorboard: False -> True"]
    del saved["log"]   # a checkpoint from before the setting ran without TensorBoard: its default
    assert compat.check(saved, cfg, "last.pt") == ["log.tensorboard: False -> True"]


def test_without_the_package_the_run_stops_before_it_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)   # `import tensorboard` now fails
    for name in [name for name in sys.modules if name.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["train", "--out", str(tmp_path), *[a for o in TINY for a in ("--set", o)]]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "log.tensorboard=True: needs the tensorboard package" in error
    assert error.endswith("pip install fastssl[tensorboard]")
    assert list(tmp_path.iterdir()) == []
