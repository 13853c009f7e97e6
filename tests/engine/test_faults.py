"""The standing fault suite: divergence, full disks, torn files, changed configs, finished runs and
kills at random moments. Each test states the exact outcome, and that nothing good was lost."""
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastssl import checkpoint as checkpoint_mod
from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.config import dump_yaml, load_config
from fastssl.engine.metrics import MetricsError, read_metrics, TIMING_KEYS
from fastssl.engine.nonfinite import NonFiniteError
from fastssl.engine.trainer import RunResult, Trainer
from fastssl.loaders.atomic import NoSpaceError

TINY = ["data.num_train=128", "data.num_test=64", "loader.batch_size=32", "train.epochs=3", "train.log_every=1",
        "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=10", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference"]


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _strict_json_lines(path: Path) -> list[dict]:
    """Every line parses as JSON without NaN/Infinity tokens (which json.loads would accept)."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _poison_step(trainer: Trainer, bad_steps: set[int]) -> None:
    """The method's loss is NaN at the given 0-based steps (an injected divergence)."""
    forward = trainer.method.forward

    def poisoned(z, layout, targets=None):
        loss = forward(z, layout, targets)
        return loss * float("nan") if trainer.run.step in bad_steps else loss
    trainer.method.forward = poisoned


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_divergence_stops_names_the_step_and_keeps_the_finite_checkpoint(tmp_path):
    trainer = Trainer(load_config(None, TINY + ["train.ckpt_every=2"]), tmp_path)
    _poison_step(trainer, {6})
    with pytest.raises(NonFiniteError, match=r"non-finite at step 7 .*last good checkpoint is .*last.pt \(step 6\)"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["run"]["step"] == 6 and _all_finite(state["model"])
    records = _strict_json_lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]   # step 7 was never logged


def test_the_cli_exits_non_zero_on_divergence_and_writes_valid_json(tmp_path, capsys):
    """The reported case: lr 1e6 diverges; the run must not exit 0 with a kNN line, nor save NaN."""
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), *_sets(TINY + ["optim.lr=1e6", "train.max_steps=12",
                                                             "train.ckpt_every=2"])])
    err = capsys.readouterr()
    assert code == 2 and "knn_top1=" not in err.out
    assert re.search(r"fastssl train: error: the (loss|weights) became non-finite (at|by) step \d+", err.err)
    _strict_json_lines(out / "metrics.jsonl")
    if (out / "last.pt").exists():
        assert _all_finite(load_checkpoint(out / "last.pt")["model"])


def test_skip_step_drops_the_update_counts_it_and_stops_past_the_limit(tmp_path):
    cfg = load_config(None, TINY + ["train.on_nonfinite=skip_step", "train.max_steps=6"])
    trainer = Trainer(cfg, tmp_path / "a")
    _poison_step(trainer, {2, 4})
    before = {}
    step = trainer.train_step

    def watched(task):
        if trainer.run.step in (2, 4):
            before[trainer.run.step] = [p.detach().clone() for p in trainer.model.parameters()]
        step(task)
        if trainer.run.step - 1 in before:   # the skipped step left every weight as it was
            assert all(torch.equal(a, b) for a, b in zip(before[trainer.run.step - 1], trainer.model.parameters()))
    trainer.train_step = watched
    result = trainer.fit()
    assert result.steps == 6 and sorted(before) == [2, 4]
    records = _strict_json_lines(tmp_path / "a" / "metrics.jsonl")
    logged = {r["step"]: r for r in records if "lr" in r}
    assert logged[3]["loss"] is None and logged[3]["skipped_steps"] == 1      # the interval held one step
    assert logged[6]["skipped_steps"] == 2 and all(logged[s]["loss"] is not None for s in (1, 2, 4, 6))
    assert load_checkpoint(tmp_path / "a" / "last.pt")["guard"]["skipped"] == 2

    limited = Trainer(load_config(None, TINY + ["train.on_nonfinite=skip_step", "train.max_skipped_steps=1",
                                                "train.max_steps=6"]), tmp_path / "b")
    _poison_step(limited, {2, 4})
    with pytest.raises(NonFiniteError, match=r"step 5, the 2th skipped step: more than train.max_skipped_steps=1"):
        limited.fit()


def test_a_failed_save_removes_its_temporary_file_and_names_the_full_disk(tmp_path, monkeypatch):
    trainer = Trainer(load_config(None, TINY + ["train.max_steps=2"]), tmp_path)
    trainer.fit()
    good = (tmp_path / "last.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint_mod.torch, "save", full_disk)
    with pytest.raises(NoSpaceError, match=r"no space left on device: .*last.pt needs about [0-9.]+ MB") as err:
        trainer.save()
    needed = float(str(err.value).split("needs about ")[1].split(" MB")[0])
    assert 0.5 < needed < 20                                 # the model and optimizer state: ~1.5 MB
    assert (tmp_path / "last.pt").read_bytes() == good
    assert not (tmp_path / "last.pt.tmp").exists()


def _run(tmp_path, name, extra=()):
    out = tmp_path / name
    Trainer(load_config(None, TINY + list(extra)), out).fit()
    return out


def test_resume_tolerates_a_torn_last_metrics_line_but_not_a_corrupt_earlier_one(tmp_path, crash_after_first_checkpoint):
    cfg = load_config(None, TINY + ["train.ckpt_every=5"])
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "torn"))
    metrics = tmp_path / "torn" / "metrics.jsonl"
    lines = load_checkpoint(tmp_path / "torn" / "last.pt")["run"]["metrics_lines"]
    with open(metrics, "a") as f:
        f.write('{"step": 6, "epoch": 1, "lo')                 # a kill or a full disk mid-line
    assert main(["train", "--resume", str(tmp_path / "torn")]) == 0
    records = _strict_json_lines(metrics)
    straight = _strict_json_lines(_run(tmp_path, "straight", ["train.ckpt_every=5"]) / "metrics.jsonl")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs]  # noqa: E731
    assert strip(records) == strip(straight)

    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "corrupt"))
    metrics = tmp_path / "corrupt" / "metrics.jsonl"
    text = metrics.read_text().splitlines(keepends=True)
    text[lines - 2] = "garbage\n"
    metrics.write_text("".join(text))
    with pytest.raises(MetricsError, match=rf"line {lines - 1} is not JSON"):
        Trainer(cfg, tmp_path / "corrupt", resume=True)
    assert metrics.read_text().splitlines()[lines - 2] == "garbage"   # refused, not "repaired"


def _edit_config(run: Path, **changes) -> None:
    cfg = load_config(run / "config.yaml", [f"{k}={v}" for k, v in changes.items()])
    (run / "config.yaml").write_text(dump_yaml(cfg))


def test_resume_refuses_a_changed_model_or_batch_and_reports_safe_changes(tmp_path, crash_after_first_checkpoint,
                                                                          capsys):
    cfg = load_config(None, TINY + ["train.ckpt_every=5"])
    run = tmp_path / "run"
    crash_after_first_checkpoint(Trainer(cfg, run))
    capsys.readouterr()
    saved = (run / "config.yaml").read_text()
    for key, value, shown in (("model.width", 0.25, "model.width: 0.125 in the checkpoint, 0.25 now"),
                              ("loader.batch_size", 64, "loader.batch_size: 32 in the checkpoint, 64 now")):
        _edit_config(run, **{key: value})
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("fastssl train: error: checkpoint ") and shown in err.splitlines()[-1]
        assert "Traceback" not in err
        (run / "config.yaml").write_text(saved)
    _edit_config(run, **{"train.epochs": 4, "loader.workers": 1})
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "resuming with a changed config: train.epochs: 3 -> 4" in err and "loader.workers: 2 -> 1" in err
    assert load_checkpoint(run / "last.pt")["run"]["step"] == 4 * 4


def test_eval_refuses_a_model_override_that_does_not_fit_the_checkpoint(tmp_path, capsys):
    run = _run(tmp_path, "run", ["train.max_steps=1"])
    assert main(["eval", "--ckpt", str(run / "last.pt"), "--protocol", "knn", "--set", "model.width=0.25"]) == 2
    assert "model.width: 0.125 in the checkpoint, 0.25 now" in capsys.readouterr().err


def test_resuming_a_finished_run_prints_its_result_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *_sets(TINY + ["train.max_steps=3"])]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    # Every file but the run folder's lock, which names its latest holder (engine/rundir.py).
    files = lambda: {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.name != ".lock"}  # noqa: E731
    before = files()
    assert main(["train", "--resume", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == first
    assert files() == before


def test_only_the_main_rank_prints_the_result(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank runs `fastssl train`; the run folder and the result lines are rank 0's alone
    (every rank named the folder, four times in a two-node log)."""
    from fastssl.engine.distributed import Dist

    def init(self, cfg, out, resume=False, module=None, accept_data_change=False):
        self.out_dir, self.dist = out, Dist(rank=0 if is_main else 1, world=2)
    for is_main, lines in ((False, 0), (True, 1)):
        monkeypatch.setattr(Trainer, "__init__", init)
        monkeypatch.setattr(Trainer, "fit", lambda self: RunResult(0.5, 0.1, 3, tmp_path, is_main=is_main))
        assert main(["train", "--out", str(tmp_path / "r")]) == 0
        printed = capsys.readouterr()
        assert printed.out.count("knn_top1=") == printed.err.count("run directory: ") == lines


def test_python_and_numpy_generators_are_seeded_by_the_run(tmp_path):
    random.seed(123)
    np.random.seed(123)
    Trainer(load_config(None, TINY + ["train.seed=7"]), tmp_path)
    got = (random.random(), float(np.random.rand()))
    random.seed(7)
    np.random.seed(7)
    assert got == (random.random(), float(np.random.rand()))


def test_a_full_disk_then_freed_space_resumes_bitwise(tmp_path, mount_tmpfs, capsys):
    """A disk with room for one checkpoint but not for its replacement beside it (atomic saves need
    both for a moment): the second save fails cleanly; after space is freed the run resumes and ends
    with the uninterrupted run's weights."""
    overrides = TINY + ["train.ckpt_every=2"]
    straight = load_checkpoint(_run(tmp_path, "straight", ["train.ckpt_every=2"]) / "last.pt")
    size = (tmp_path / "straight" / "last.pt").stat().st_size
    disk = mount_tmpfs(int(1.5 * size) + 64 * 1024)
    run = disk / "run"
    assert main(["train", "--out", str(run), *_sets(overrides)]) == 2
    err = capsys.readouterr().err
    assert "no space left on device:" in err and "needs about" in err and "Traceback" not in err
    assert not list(run.glob("*.tmp"))
    assert load_checkpoint(run / "last.pt")["run"]["step"] == 2
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    assert main(["train", "--resume", str(run)]) == 0
    resumed = load_checkpoint(run / "last.pt")
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensor", "torchvision"])
def test_sigkill_at_random_moments_then_resume_is_bitwise(tmp_path, backend):
    """Kills at seeded random moments (checkpoints every step, so many land inside a save), each
    followed by --resume, end with the uninterrupted run's weights and metrics, bit for bit (torchvision,
    whose DataLoader workers outlive a killed parent for a moment: 4 kills; the tensor backend 8)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_args = _sets(TINY + [f"loader.backend={backend}", "loader.workers=1", "train.ckpt_every=1", "train.epochs=6"])
    fastssl = [sys.executable, "-m", "fastssl", "train"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(fastssl + ["--out", str(straight), *run_args], check=True, env=env, capture_output=True)
    rng = random.Random(backend)
    args, kills = ["--out", str(killed), *run_args], 0
    for _ in range(8 if backend == "tensor" else 4):
        ckpt = killed / "last.pt"
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        proc = subprocess.Popen(fastssl + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        # Wait until this process has saved a checkpoint of its own (it trains), then kill it a random
        # moment later: with a checkpoint every step, many kills land inside a save.
        while proc.poll() is None and time.monotonic() - start < 120 and (
                not ckpt.exists() or ckpt.stat().st_mtime_ns == before):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        args = ["--resume", str(killed)]
    else:
        subprocess.run(fastssl + args, check=True, env=env, capture_output=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"a run exited {proc.returncode}")
    assert kills >= 3, f"only {kills} kills landed before the run ended"
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["run"]["step"] == b["run"]["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    strip = lambda path: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(path)]  # noqa: E731
    assert strip(killed / "metrics.jsonl") == strip(straight / "metrics.jsonl")
    assert not list(killed.glob("*.tmp"))


def test_a_kill_between_the_last_step_and_the_final_evaluation_is_finished_by_resume(tmp_path, capsys):
    """The checkpoint of the last step (ckpt_every) is not the end of the run: the final evaluation
    still has to be logged, once (found by the random-kill test)."""
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, TINY + ["train.max_steps=4", "train.ckpt_every=2"]), run)
    evaluate = trainer._evaluate
    trainer._evaluate = lambda epoch: evaluate(epoch) if trainer.run.step == 0 else (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(run / "last.pt")["run"]["step"] == 4
    assert main(["train", "--resume", str(run)]) == 0
    knn = [r for r in read_metrics(run / "metrics.jsonl") if "knn_top1" in r]
    assert [r["step"] for r in knn] == [0, 4]
    assert capsys.readouterr().out.strip().endswith(f"(random init: {knn[0]['knn_top1']:.4f})")
