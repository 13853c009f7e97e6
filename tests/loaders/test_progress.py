"""The progress bar: lines in a log, a bar redrawn in place on a terminal (a pseudo-terminal here)."""
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from fastssl.loaders.progress import ProgressBar


def test_log_gets_one_line_per_update_with_counts_and_status():
    out = io.StringIO()
    bar = ProgressBar("train", 40, unit="steps", initial=10, every_s=0, stream=out)
    bar.update(20, "loss 1.2500")
    bar.message("knn_top1 after epoch 1: 0.5000")
    bar.update(40, "loss 0.7500")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("train: 20/40 steps [ 50%] loss 1.2500 ")
    assert lines[1] == "knn_top1 after epoch 1: 0.5000"
    assert lines[2].startswith("train: 40/40 steps [100%] loss 0.7500 ") and lines[2].endswith("ETA 00:00")


def test_log_lines_are_rationed_but_the_last_is_always_written():
    out = io.StringIO()
    bar = ProgressBar("indexing /data", every_s=3600, stream=out)
    for done in range(0, 1001, 100):
        bar(done, 1000)
    lines = out.getvalue().splitlines()
    assert [line.split(" files")[0] for line in lines] == ["indexing /data: 1,000/1,000"]


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = ProgressBar("train", 4, every_s=0, stream=out, enabled=False)
    bar.update(4, "loss 1")
    bar.message("hello")
    assert out.getvalue() == ""


def _run_on_a_terminal(argv: list[str], columns: int = 120) -> str:
    """argv's stdout and stderr on one pseudo-terminal of `columns` columns, as the terminal got them."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:   # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_train_on_a_terminal_redraws_one_bar_and_ends_with_the_result(tmp_path):
    sets = ["data.num_train=256", "data.num_test=64", "loader.batch_size=32", "train.epochs=2",
            "train.log_every=1", "train.device=cpu", "train.precision=fp32", "knn.k=10", "knn.every_epochs=1",
            "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference"]
    argv = [sys.executable, "-m", "fastssl", "train", "--out", str(tmp_path / "run")]
    screen = _run_on_a_terminal(argv + [arg for s in sets for arg in ("--set", s)])
    # Redraws in place: the bar comes back after each carriage return with a growing count (tqdm
    # redraws at most every 0.1 s, so not every logged step shows), with the log's numbers as postfix.
    counts = [int(n) for n in re.findall(r"\rtrain: +\d+%\|[^\r\n|]*\| (\d+)/16 \[", screen)]
    assert len(set(counts)) >= 3 and counts == sorted(counts) and counts[-1] == 16, counts
    assert re.search(r"16/16 \[[^]]*, epoch 2/2 loss \d\.\d{4} lr 0 [\d,]+ img/s\]", screen)
    # Messages are printed above the bar, on a line of their own (the bar is cleared first); the log
    # format's step lines never appear on a terminal.
    assert re.search(r"\r {20,}\rknn_top1 after epoch 1: \d\.\d{4}\r\n\rtrain: ", screen)
    assert "train: 1/16 steps [" not in screen
    # The final line, as the terminal shows it, is the result: whole and alone.
    lines = [line.rsplit("\r", 1)[-1] for line in screen.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line.strip()]
    assert re.fullmatch(r"knn_top1=\d\.\d{4} \(random init: \d\.\d{4}\)", lines[-1]), lines[-3:]
    assert re.fullmatch(r"train: 100%\|[^|]*\| 16/16 .*", lines[-2]), lines[-3:]


def test_tracked_yields_every_item_and_logs_the_last(capsys):
    from fastssl.loaders.progress import tracked

    assert list(tracked(range(7), "features: test split", "batches")) == list(range(7))
    line = capsys.readouterr().err.strip()
    assert line.startswith("features: test split: 7/7 batches [100%] ") and "\n" not in line
