"""A full disk, writer by writer: each file fastssl writes lands whole or fails with the one line of
loaders/atomic.py's NoSpaceError ("no space left on device: PATH needs about N MB (M MB free); nothing was
written, the previous file (if any) is intact"), exit code 2 and no traceback, leaving no temporary
file and every file that was there before unchanged. Each test fills a small tmpfs (mount_tmpfs)."""
import errno
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine.metrics import MetricsLog, read_metrics
from fastssl.engine.plots import plot_curves
from fastssl.engine.trainer import Trainer
from fastssl.loaders.atomic import NoSpaceError

TINY = ["data.num_train=128", "data.num_test=64", "loader.batch_size=32", "train.max_steps=1", "train.precision=fp32",
        "train.device=cpu", "knn.every_epochs=0", "knn.k=10", "model.width=0.125", "model.projector_hidden=32",
        "model.projector_out=16", "augment.impl=reference", "method.loss_impl=reference"]
PAGE = 4096   # tmpfs gives files whole pages: a file's last page has room for what is appended next
NO_SPACE = re.compile(r"fastssl (?P<verb>\w+): error: no space left on device: (?P<path>.+) needs about "
                      r"(?P<needed>[0-9.]+) MB \((?P<free>[0-9.]+) MB free\); nothing was written, the previous file "
                      r"\(if any\) is intact")


def _fill(disk: Path, leave: int = 0) -> None:
    """Takes every free byte of `disk` but `leave` (whole pages) with a file of its own, disk/filler."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 20))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    os.ftruncate(fd, os.fstat(fd).st_size - leave)
    os.close(fd)
    assert shutil.disk_usage(disk).free == leave


def _no_space(err: str, verb: str, path: Path) -> tuple[float, float]:
    """stderr ends with the NoSpaceError line of `verb` naming `path`, and holds no traceback; the MB it
    says the file needed and the MB it says were free."""
    assert "Traceback" not in err, err[-3000:]
    found = NO_SPACE.fullmatch(err.strip().splitlines()[-1])
    assert found and (found["verb"], found["path"]) == (verb, str(path)), err[-3000:]
    return float(found["needed"]), float(found["free"])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of one step on the ordinary disk: what export, features and eval read."""
    out = tmp_path_factory.mktemp("full_disk") / "run"
    Trainer(load_config(None, TINY), out).fit()
    return out


def test_a_metrics_line_that_does_not_fit_leaves_the_file_as_it_was(mount_tmpfs):
    """The line is longer than the room left in the file's last page: the write tears it, and the file
    is cut back. A resume from a checkpoint that counted the lines before it then appends cleanly."""
    disk = mount_tmpfs(1 << 20)
    path = disk / "metrics.jsonl"
    log = MetricsLog(path, keep_lines=0)
    log.write({"step": 1, "loss": 0.5})
    log.write({"step": 2, "loss": float("nan")})
    before = path.read_bytes()
    _fill(disk)
    wide = {"step": 3, "note": "x" * (2 * PAGE)}
    with pytest.raises(NoSpaceError, match=rf"no space left on device: {re.escape(str(path))} needs about 0.008 MB "
                                           r"\(0.0 MB free\); nothing was written"):
        log.write(wide)
    assert path.read_bytes() == before and log.lines == 2
    (disk / "filler").unlink()
    MetricsLog(path, keep_lines=2).write({"step": 3, "loss": 0.25})
    assert read_metrics(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}, {"step": 3, "loss": 0.25}]


def test_a_run_whose_first_metrics_line_meets_a_full_disk_exits_2_and_leaves_no_metrics_file(mount_tmpfs, monkeypatch,
                                                                                                 capsys):
    """The disk fills up as the run starts logging (config.yaml and env.json are written): the run stops
    with the one line, and the metrics.jsonl that the failed append created is gone again."""
    disk = mount_tmpfs(1 << 20)
    write = MetricsLog.write

    def fill_then_write(log, record):
        if not (disk / "filler").exists():
            _fill(disk)
        write(log, record)
    monkeypatch.setattr(MetricsLog, "write", fill_then_write)
    run = disk / "run"
    assert main(["train", "--out", str(run), *[a for o in TINY for a in ("--set", o)]]) == 2
    needed, free = _no_space(capsys.readouterr().err, "train", run / "metrics.jsonl")
    assert 0 < needed < 0.001 and free == 0        # one JSON line: the kNN score at random init
    assert {"config.yaml", "env.json"} <= set(_files(run)) and "metrics.jsonl" not in _files(run)
    assert load_config(run / "config.yaml").model.width == 0.125
    assert not list(disk.rglob("*.tmp"))


def test_a_tensorboard_event_that_does_not_fit_leaves_the_event_file_as_it_was(mount_tmpfs, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install -e '.[dev]')")
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    from fastssl.engine.tensorboard import LOG_DIR, TensorBoardSink

    disk = mount_tmpfs(1 << 20)
    sink = TensorBoardSink(disk, start_step=0)
    sink.write({"step": 1, "epoch": 0, "loss": 0.5})
    (events,) = (disk / LOG_DIR).iterdir()
    before = events.read_bytes()
    _fill(disk)
    wide = {"step": 2, "epoch": 0, "loss": 0.25, **{f"metric_{i}": float(i) for i in range(400)}}  # > a page
    with pytest.raises(NoSpaceError, match=rf"no space left on device: {re.escape(str(events))} needs about") as error:
        sink.write(wide)
    needed = float(str(error.value).split("needs about ")[1].split(" MB")[0]) * 2**20
    assert 401 * 20 < needed < 401 * 30       # a value: its tag (14 to 16 characters), a float32 and framing
    assert events.read_bytes() == before and "Traceback" not in capsys.readouterr().err
    reader = EventAccumulator(str(disk / LOG_DIR), size_guidance={SCALARS: 0})
    reader.Reload()
    assert reader.Tags()[SCALARS] == ["train/loss"]
    assert [(e.step, e.value) for e in reader.Scalars("train/loss")] == [(1, 0.5)]


@pytest.mark.parametrize("fmt", ["torchvision", "safetensors", "torchscript", "onnx"])
def test_an_export_to_a_full_disk_keeps_the_previous_file_and_succeeds_once_there_is_room(trained, mount_tmpfs,
                                                                                           capsys, fmt):
    if fmt == "onnx":
        for package in ("onnx", "onnxscript"):
            pytest.importorskip(package, reason=f"--format onnx needs {package}: pip install -e '.[dev]'")
    disk = mount_tmpfs(2 << 20)
    out = disk / "network.exported"
    out.write_bytes(b"an earlier export\n")
    _fill(disk)
    args = ["export", str(trained), "--format", fmt, "--out", str(out)]
    if fmt == "torchscript":   # torch.jit.save to a full disk aborted the process: only a child shows it
        done = subprocess.run([sys.executable, "-m", "fastssl", *args], capture_output=True, text=True, timeout=300)
        code, err = done.returncode, done.stderr
    else:
        code, err = main(args), capsys.readouterr().err
    assert code == 2
    needed, free = _no_space(err, "export", out)
    assert free == 0 and sorted(_files(disk)) == ["filler", out.name] and out.read_bytes() == b"an earlier export\n"
    (disk / "filler").unlink()
    assert main(args) == 0
    assert abs(needed - out.stat().st_size / 2**20) <= 0.1     # the size it said, give or take the format's header
    assert sorted(_files(disk)) == [out.name]


def test_features_on_a_disk_with_room_for_part_of_them(trained, mount_tmpfs):
    """Room for the header and a batch of rows, not for the 128 x 64 float32 features: a memory map
    there died of SIGBUS; the stream fails with the one line, and the earlier files are kept."""
    disk = mount_tmpfs(1 << 20)
    out = disk / "features"
    out.mkdir()
    earlier = {"train_features.npy": b"earlier features\n", "features.json": b"{}\n"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    _fill(disk, leave=2 * PAGE)
    done = subprocess.run([sys.executable, "-m", "fastssl", "features", str(trained), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    needed, free = _no_space(done.stderr, "features", out / "train_features.npy")
    assert needed == pytest.approx(128 * 64 * 4 / 2**20, rel=0.05) and free == pytest.approx(2 * PAGE / 2**20, rel=0.05)
    assert _files(out) == earlier and not list(disk.rglob("*.tmp"))


def test_the_semi_supervised_index_file_on_a_full_disk(trained, mount_tmpfs, capsys):
    """1% of 128 images in 10 classes: one index per class, 10 int64 in a .npy file."""
    disk = mount_tmpfs(4 << 20)
    run = disk / "run"
    shutil.copytree(trained, run)
    (run / "eval_semi_indices_1pct.npy").write_bytes(b"an earlier subset\n")
    before = _files(run)
    _fill(disk)
    assert main(["eval", "--ckpt", str(run / "last.pt"), "--protocol", "semi"]) == 2
    needed, free = _no_space(capsys.readouterr().err, "eval", run / "eval_semi_indices_1pct.npy")
    npy = io.BytesIO()
    np.save(npy, np.zeros(10, np.int64))
    assert needed == pytest.approx(len(npy.getvalue()) / 2**20, rel=0.05) and free == 0
    assert _files(run) == before


def test_the_curves_png_on_a_full_disk_keeps_the_previous_one(trained, mount_tmpfs):
    disk = mount_tmpfs(1 << 20)
    path = disk / "curves.png"
    path.write_bytes(b"earlier curves\n")
    _fill(disk)
    with pytest.raises(NoSpaceError, match=rf"no space left on device: {re.escape(str(path))} \(0.0 MB free\)"):
        plot_curves(read_metrics(trained / "metrics.jsonl"), path)
    assert _files(disk) == {"filler": (disk / "filler").read_bytes(), "curves.png": b"earlier curves\n"}
