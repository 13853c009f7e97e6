"""`fastssl bench loader` end to end on the embedded data, and its CPU accounting against the kernel's own."""
import csv
import dataclasses
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


CROPS = "augment.crops=[{views: 2, size: 32, scale: [0.14, 1]}, {views: 2, size: 16, scale: [0.05, 0.14]}]"


def test_multi_crop_shape_names_each_size_and_counts_images(tmp_path, monkeypatch):
    """The shape names each run of equal-sized views; a window counts a batch as its 16 images, not its
    64 views (the count _window is given per batch)."""
    given = []
    real = loader_bench._window
    monkeypatch.setattr(loader_bench, "_window", lambda batches, per_batch, *a: given.append(per_batch)
                        or real(batches, per_batch, *a))
    out = tmp_path / "results"
    assert main(["bench", "loader", "--backends", "tensor,torchvision", "--seconds", "0.4", "--windows", "1",
                 "--batch", "16", "--views", "4", "--workers", "0", "--set", "data.num_train=64", "--set",
                 "task.n_query=3", "--set", "augment.impl=reference", "--set", CROPS, "--out", str(out)]) == 0
    assert given == [16, 16]
    rows = loader_bench.read_rows(out / "loader_cpu")
    assert {r.shape for r in rows} == {"shapes 2x16x32px+2x16x16px 0 workers"}
    assert "## shapes 2x16x32px+2x16x16px 0 workers" in (out / "loader_cpu.md").read_text()


def _rows(shape: str, rates: dict[str, float], date: str) -> list:
    """Rows of one run as measure() gives them, with chosen numbers."""
    where = dict(device="CPU x86_64 x2 threads", torch="t", triton="t", cuda="c", commit="abc", date=date)
    return [loader_bench.Row("loader", backend, shape, "uint8", mode, metric, value, value, value, unit, **where)
            for backend, rate in rates.items()
            for mode, metric, value, unit in (("steady state", "images/s", rate, "img/s"),
                                              ("steady state", "CPU cores", 1.5, "cores"),
                                              ("once", "start-up", 2.0, "s"))]


def test_merge_adds_a_shape_and_a_rerun_replaces_its_own(tmp_path):
    single, crops = "cifar 2x256x32px 2 workers", "cifar 2x256x32px+6x256x16px 2 workers"
    into = tmp_path / "committed"
    loader_bench.write_all(_rows(single, {"tensor": 6000.0, "torchvision": 1500.0}, "d1"), into,
                           tmp_path / "committed" / "loader_cpu.json")
    loader_bench.write_all(_rows(crops, {"tensor": 2000.0, "torchvision": 500.0}, "d2"), tmp_path / "new")
    loader_bench.merge(tmp_path / "new" / "loader_cpu", into / "loader_cpu")
    rows = loader_bench.read_rows(into / "loader_cpu")
    assert [(r.shape, r.provider, r.median) for r in rows if r.metric == "images/s"] == [
        (single, "tensor", 6000.0), (single, "torchvision", 1500.0), (crops, "tensor", 2000.0),
        (crops, "torchvision", 500.0)]
    assert json.loads((into / "loader_cpu.json").read_text()) == [dataclasses.asdict(r) for r in rows]
    text = (into / "loader_cpu.md").read_text()
    # Each shape's ratio is to its own baseline: 6000 / 1500 and 2000 / 500, both 4.00x.
    sections = text.split("## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [single, crops]
    for section, date in zip(sections, ("d1", "d2")):
        assert f"commit abc; {date}" in section
        (line,) = [ln for ln in section.splitlines() if ln.startswith("| tensor |")]
        assert line.split("|")[4].strip() == "4.00x"
    loader_bench.write_all(_rows(crops, {"tensor": 2500.0, "torchvision": 500.0}, "d3"), tmp_path / "rerun")
    loader_bench.merge(tmp_path / "rerun" / "loader_cpu", into / "loader_cpu")
    rates = {(r.shape, r.provider): r.median for r in loader_bench.read_rows(into / "loader_cpu")
             if r.metric == "images/s"}
    assert rates == {(single, "tensor"): 6000.0, (single, "torchvision"): 1500.0, (crops, "tensor"): 2500.0,
                     (crops, "torchvision"): 500.0}
