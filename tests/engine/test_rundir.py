"""Every run owns its folder: made unique when fastssl names it, locked while a process writes it, made
only once the config's rules have passed, and a resume without a checkpoint says what to do."""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine import rundir, trainer as trainer_mod
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer

TINY = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.epochs=1", "train.log_every=1",
        "train.precision=fp32", "train.device=cpu", "knn.k=5", "knn.every_epochs=0", "model.width=0.125",
        "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference"]


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _make(stem, queue):
    queue.put(str(rundir.new_folder(stem)))


def test_folders_made_at_once_from_one_stem_are_all_different(tmp_path):
    """Eight processes forked together, one stem: eight folders, each made by exactly one of them."""
    stem = tmp_path / "runs" / "20261206-010203"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=_make, args=(stem, queue)) for _ in range(8)]
    for proc in procs:
        proc.start()
    made = sorted(queue.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join()
    expected = sorted([str(stem)] + [f"{stem}-{n}" for n in range(2, 9)])
    assert made == expected and sorted(map(str, (tmp_path / "runs").iterdir())) == expected


def test_runs_started_in_the_same_second_keep_their_own_results(tmp_path, monkeypatch, capsys):
    """Three runs of a sweep without --out, in the same second: before the fix they shared one folder,
    two results were lost and metrics.jsonl interleaved three learning rates."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, *a: "20261206-010203" if "%Y%m%d" in fmt
                        else "2026-12-06 01:02:03")
    lrs = [0.5, 0.25, 0.125]
    for lr in lrs:
        assert main(["train", *_sets(TINY + ["train.max_steps=2", f"optim.lr={lr}", "optim.warmup_epochs=0"])]) == 0
    capsys.readouterr()
    folders = sorted((tmp_path / "runs").iterdir())
    assert [f.name for f in folders] == ["20261206-010203", "20261206-010203-2", "20261206-010203-3"]
    for folder, lr in zip(folders, lrs):
        assert load_config(folder / "config.yaml").optim.lr == lr
        logged = [r["lr"] for r in read_metrics(folder / "metrics.jsonl") if "lr" in r]
        assert logged == [pytest.approx(lr * 0.5), 0.0]   # cosine over 2 steps: lr/2 after the first, 0 at the end


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fastssl.engine import rundir
    rundir.claim(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder():
    """holder(path) -> a process holding the claim on `path` (the trainer's own lock, without torch)."""
    procs = []

    def hold(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc
    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_folder_in_use_is_refused_naming_its_holder_and_freed_by_a_kill(tmp_path, holder, capsys):
    """Before the fix a second --resume of a run still going ran beside it: one crashed on last.pt.tmp and
    metrics.jsonl gained steps the checkpoint did not count. A SIGKILLed holder leaves no stale lock."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *_sets(TINY + ["train.max_steps=2"])]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != rundir.LOCK}
    proc = holder(run)
    assert main(["train", "--resume", str(run)]) == 2
    line = _last_error(capsys)
    assert line.startswith(f"fastssl train: error: run directory {str(run)!r}: in use by pid {proc.pid} on "
                           f"{socket.gethostname()} since ")
    assert line.endswith("wait for it to end, or choose another --out")
    assert main(["train", "--out", str(run), *_sets(TINY)]) == 2            # a new run into it: refused too
    assert f"in use by pid {proc.pid}" in _last_error(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != rundir.LOCK} == before
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["train", "--resume", str(run)]) == 0                       # the kernel dropped the lock
    assert json.loads((run / rundir.LOCK).read_text())["pid"] == os.getpid()


def test_a_trainer_holds_its_folder_until_fit_ends(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, TINY + ["train.max_steps=1"]), run)
    probe = [sys.executable, "-c", "import sys; from pathlib import Path; from fastssl.engine import rundir\n"
             "try:\n    rundir.claim(Path(sys.argv[1]))\nexcept rundir.RunDirError as e:\n    sys.exit(str(e))",
             str(run)]
    refused = subprocess.run(probe, capture_output=True, text=True)
    assert refused.returncode == 1 and f"in use by pid {os.getpid()}" in refused.stderr
    trainer.fit()
    assert subprocess.run(probe, capture_output=True, text=True).returncode == 0


REFUSED = {"method.contrastive.temperature=0.0": "method.contrastive.temperature=0.0: must be a finite number in",
           "train.device=cuda": "train.device='cuda': no CUDA GPU is available on this machine",
           "data.dataset=imagefolder": "data.train_split='train': "}   # a folder without split folders


@pytest.mark.parametrize("override", list(REFUSED))
def test_a_run_refused_after_torch_loads_leaves_no_folder(tmp_path, monkeypatch, override, capsys):
    """Rules checked once torch is loaded (a method's own settings, the device, the data) used to fail
    after the CLI had made the run folder, leaving it empty."""
    if override == "train.device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    empty = tmp_path / "no-classes"
    empty.mkdir()
    extra = [f"data.path={empty}"] if override.startswith("data.") else []
    monkeypatch.chdir(tmp_path)
    for out in (["--out", str(tmp_path / "run")], []):
        assert main(["train", *out, *_sets(TINY + [override] + extra)]) == 2
        line = _last_error(capsys)
        assert line.startswith("fastssl train: error: ") and REFUSED[override] in line, line
        assert not (tmp_path / "run").exists()
        assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("out", ["{tmp}/file/run", "{tmp}/file", "/proc/fastssl-run"])
def test_an_unwritable_out_fails_before_any_data_is_built(out, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("a regular file")
    out = out.format(tmp=tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the data were built before the run folder was checked")
    monkeypatch.setattr(trainer_mod, "build_dataset", never)
    assert main(["train", "--out", out, *_sets(TINY)]) == 2
    assert f"run directory {out!r}: cannot be written" in _last_error(capsys)
    assert (tmp_path / "file").read_text() == "a regular file"


def test_resume_before_the_first_checkpoint_says_how_to_start_again(tmp_path, capsys):
    """A run killed before its first save: --resume used to say only "does not exist"."""
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, TINY + ["train.ckpt_every_epochs=0"]), run)
    trainer._evaluate = lambda epoch: (_ for _ in ()).throw(KeyboardInterrupt)   # dies before training
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert main(["train", "--resume", str(run)]) == 2
    line = _last_error(capsys)
    advice = f"fastssl train -c {run / 'config.yaml'} --out {run}"
    assert "holds no last.pt yet" in line and line.endswith(advice)
    assert main(advice.split()[1:]) == 0
    assert "knn_top1=" in capsys.readouterr().out


def test_a_full_disk_at_the_start_is_the_one_line_message_and_leaves_no_folder(tmp_path, mount_tmpfs, capsys):
    disk = mount_tmpfs(64 * 1024)
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    assert main(["train", "--out", str(disk / "run"), *_sets(TINY)]) == 2
    assert _last_error(capsys).startswith(f"fastssl train: error: no space left on device: {disk / 'run' / '.lock'} (")
    assert not (disk / "run").exists()


HOLD_AND_FORK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from fastssl.engine import rundir
    rundir.claim(Path(sys.argv[1]))
    child = os.fork()              # as a DataLoader forks its workers
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(120)
""")


def test_the_children_of_a_killed_holder_do_not_keep_its_folder(tmp_path):
    """A SIGKILLed run's DataLoader workers live on for a moment; with an flock (shared with forked
    children) they held the lock and refused the --resume started right after (found by the random-kill
    test on the torchvision backend)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(run)], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)                          # the child is still alive
        assert rundir.claim(run) == run
        rundir.release(run)
    finally:
        os.kill(child, signal.SIGKILL)
