"""`fastssl bench startup` end to end on a tiny tree: ImageNet's layout, every header read by a first start
and none by a second, the CSV's rows against the tree, the Markdown's target; the tree's reuse rules."""
import csv
import hashlib
import importlib.util
import json
import os
import re

import pytest
from PIL import Image

from fastssl.bench import startup_bench
from fastssl.cli import main
from fastssl.config import ConfigError
from fastssl.loaders.datasets.index import index_path

FILES, CLASSES = 300, 10
TIMES = ("start", "index", "loader", "imports")


def walk(folder):
    """{class folder: [file names]} of a split, read with os.walk rather than the index."""
    return {os.path.basename(d): sorted(names) for d, subdirs, names in os.walk(folder) if d != str(folder)}


def group(backends):
    """A parametrization of comma-separated backends, skipped where an optional package is missing."""
    missing = [startup_bench.PACKAGES[b] for b in backends.split(",") if b in startup_bench.PACKAGES
               and importlib.util.find_spec(startup_bench.PACKAGES[b]) is None]
    return pytest.param(backends, id=backends, marks=pytest.mark.skipif(bool(missing), reason=f"{missing} missing"))


# One run per group keeps each test well under a minute: every start is a fresh process (imports of 3 to
# 7 s on two cores), and the ffcv run converts its .beton first.
@pytest.mark.parametrize("backends", [group("tensor,torchvision"), group("dali"), group("ffcv")])
def test_bench_startup_end_to_end(backends, tmp_path, capsys):
    names = backends.split(",")
    root, out = tmp_path / "tree", tmp_path / "results"
    assert main(["bench", "startup", "--files", str(FILES), "--classes", str(CLASSES), "--repeats", "1",
                 "--root", str(root), "--backends", backends, "--out", str(out)]) == 0

    # The tree: ImageNet's layout and count, val/ with one file per class, distinct images of varied sizes.
    train, val = walk(root / "train"), walk(root / "val")
    assert sorted(train) == sorted(val) and len(train) == CLASSES
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in train)
    assert sum(map(len, train.values())) == FILES and {len(v) for v in train.values()} == {FILES // CLASSES}
    assert all(re.fullmatch(rf"{wnid}_\d+\.JPEG", name) for wnid, listed in train.items() for name in listed)
    assert all(len(listed) == 1 and re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", listed[0]) for listed in val.values())
    paths = [root / "train" / wnid / name for wnid, listed in train.items() for name in listed]
    assert len({hashlib.sha1(p.read_bytes()).hexdigest() for p in paths}) == FILES
    sizes = set()
    for p in paths[::7]:
        with Image.open(p) as image:
            assert image.format == "JPEG"
            sizes.add(image.size)
    assert len(sizes) > 5 and all(32 <= side <= 64 for size in sizes for side in size)
    # Its starts indexed into folders of their own: nothing left in this run's index folder.
    assert not index_path(root / "train").exists()

    with open(out / "startup_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    at = {(r["backend"], r["phase"], r["metric"]): r for r in rows}
    for backend in names:
        for phase in ("first", "second"):
            for metric in TIMES:
                r = at[(backend, phase, metric)]
                assert 0 < float(r["min"]) <= float(r["median"]) <= float(r["max"]) and r["unit"] == "s"
                assert int(r["files"]) == FILES and int(r["repeats"]) == 1
            start, index, loader = (float(at[(backend, phase, m)]["median"]) for m in ("start", "index", "loader"))
            assert index < start == pytest.approx(index + loader)
        # The first start read every header (the count os.walk gives), the second none.
        assert float(at[(backend, "first", "header reads")]["median"]) == FILES
        assert float(at[(backend, "second", "header reads")]["median"]) == 0
        rate = float(at[(backend, "first", "files/s")]["median"])
        assert rate == pytest.approx(FILES / float(at[(backend, "first", "index")]["median"]), rel=1e-6)
        assert "target applies at 100,000 files" in at[(backend, "second", "start")]["note"]
        assert int(at[(backend, "extrapolated", "second start")]["files"]) == startup_bench.IMAGENET_TRAIN
    assert "tensor" not in names or "decodes the whole split" in at[("tensor", "second", "start")]["note"]
    pieces = {m: float(at[("index", "pieces", m)]["median"]) for m in
              ("list+stat", "header reads", "first index", "second index", "index read", "index write")}
    assert all(v > 0 for v in pieces.values())
    extrapolated = float(at[("index", "extrapolated", "second index")]["median"])
    assert extrapolated == pytest.approx(pieces["second index"] * startup_bench.IMAGENET_TRAIN / FILES)
    assert {r["device"] for r in rows} == {rows[0]["device"]} and rows[0]["commit"] and rows[0]["date"]

    table = (out / "startup_cpu.md").read_text()
    assert "**Target: a second start under 5 s for 100,000 files**" in table
    assert f"Extrapolated to ImageNet's {startup_bench.IMAGENET_TRAIN:,} training files" in table
    assert ("tensor backend decodes the whole split" in table) == ("tensor" in names)
    assert ("with `fastssl data convert`" in table) == ("ffcv" in names)
    for backend in names:
        (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| {backend} | ") and ln.count("|") == 12]
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[2] == f"{FILES:,}" and cells[6] == "0"     # headers read: first, second
    assert (out / "startup_cpu.png").stat().st_size > 5_000
    err = capsys.readouterr().err
    assert f"{names[-1]} second start 1/1" in err


def test_tree_is_reused_reshaped_or_refused(tmp_path):
    root = tmp_path / "tree"
    reused, _ = startup_bench.make_tree(root, 20, 4, progress=lambda line: None)
    assert not reused and sum(map(len, walk(root / "train").values())) == 20
    stamp = {p: p.stat().st_mtime_ns for p in (root / "train").rglob("*.JPEG")}
    assert startup_bench.make_tree(root, 20, 4, progress=lambda line: None) == (True, 0.0)
    assert {p: p.stat().st_mtime_ns for p in (root / "train").rglob("*.JPEG")} == stamp
    # Another shape (or a run killed half-way, whose marker says complete: false) is written afresh.
    startup_bench.make_tree(root, 12, 3, progress=lambda line: None)
    assert {k: len(v) for k, v in walk(root / "train").items()} == dict.fromkeys(startup_bench.wnids(3), 4)
    assert json.loads((root / startup_bench.MARKER).read_text())["complete"] is True
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="did not write"):
        startup_bench.make_tree(foreign, 20, 4)
    assert (foreign / "mine.txt").read_text() == "keep"


def test_missing_packages_are_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    runnable, skipped = startup_bench.available(["tensor", "dali", "ffcv"])
    assert runnable == ["tensor"]
    assert skipped == {"dali": "nvidia.dali is not installed (pip install -e '.[dali]')",
                       "ffcv": "ffcv is not installed (pip install -e '.[ffcv]')"}


@pytest.mark.parametrize("args,message", [
    (["--files", "5", "--classes", "10"], "files >= classes"),
    (["--repeats", "0"], "repeats >= 1"),
    (["--backends", "jax"], "--backends 'jax': must list backends of"),
])
def test_bad_arguments_name_the_rule(args, message, capsys):
    assert main(["bench", "startup", *args]) == 2
    assert message in capsys.readouterr().err
