"""`fastssl bench loader` end to end on the embedded data, and its CPU accounting against the kernel's own."""
import csv
import json
import resource
import subprocess
import sys

import pytest

from fastssl.bench import loader_bench
from fastssl.cli import main


def test_process_tree_cpu_matches_the_kernels_rusage_of_a_reaped_child():
    before_tree = loader_bench.process_tree_cpu_seconds()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"],
                   check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    spent = loader_bench.process_tree_cpu_seconds() - before_tree
    assert child >= 0.6
    assert spent == pytest.approx(child, abs=0.08)   # clock ticks are 10 ms; our own thread adds a little


def test_bench_loader_rows_ratios_json_and_report(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["bench", "loader", "--backends", "tensor,torchvision", "--seconds", "1.5", "--windows", "3",
            "--batch", "32", "--workers", "1", "--set", "data.num_train=256", "--set", "augment.impl=reference", "--out", str(out),
            "--json", str(tmp_path / "rows.json")]
    assert main(args) == 0
    with open(out / "loader_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    at = {(r["provider"], r["metric"]): r for r in rows}
    assert set(at) == {(b, m) for b in ("tensor", "torchvision") for m in loader_bench.METRICS}
    for backend in ("tensor", "torchvision"):
        rate = at[(backend, "images/s")]
        assert 0 < float(rate["p20"]) <= float(rate["median"]) <= float(rate["p80"])
        assert 0 < float(at[(backend, "CPU cores")]["median"]) <= 8 and float(at[(backend, "start-up")]["median"]) > 0
        assert rate["shape"] == "shapes 2x32x32px 1 workers"
    ratio = float(at[("tensor", "images/s")]["median"]) / float(at[("torchvision", "images/s")]["median"])
    table = (out / "loader_cpu.md").read_text()
    (line,) = [ln for ln in table.splitlines() if ln.startswith("| tensor |")]
    assert line.split("|")[4].strip() == f"{ratio:.2f}x"
    assert json.loads((tmp_path / "rows.json").read_text()) == [
        {k: (float(v) if k in ("median", "p20", "p80") else v) for k, v in r.items()} for r in rows]
    assert (out / "loader_cpu.png").stat().st_size > 5_000
    assert "window 3/3" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--data", "imagenet:/x"], "--data 'imagenet:/x': must be shapes or random, or KIND:PATH"),
    (["--data", "imagefolder"], "--data 'imagefolder': must be shapes or random, or KIND:PATH"),
    (["--backends", "tensor"], "including the torchvision baseline"),
    (["--seconds", "0"], "need seconds > 0"),
])
def test_bad_arguments_name_the_rule(args, message, capsys):
    assert main(["bench", "loader", *args]) == 2
    assert message in capsys.readouterr().err
