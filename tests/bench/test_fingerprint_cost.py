"""bench/fingerprint_cost.py at a small size: the listing it generates, its rows and its three files."""
import csv

import numpy as np
import pytest

from fastssl.bench import fingerprint_cost as bench


def test_generated_listing_is_class_major_and_named_as_imagenet():
    names, sizes, labels, classes = bench.imagenet_listing(files=3000, classes=10)
    assert len(names) == len(sizes) == 3000 and classes[3] == "n00000003"
    assert np.all(np.diff(labels) >= 0) and names[0].startswith(f"{classes[labels[0]]}/{classes[labels[0]]}_0.")


def test_rows_and_files_at_a_small_size(tmp_path):
    rows = bench.measure(reps=3, warmup=0, files=3000, images=500, progress=lambda line: None)
    assert [(r.provider, r.shape) for r in rows] == [
        (provider, shape) for shape in ("3,000 file names, 1,000 classes", "500 images 32x32 in memory")
        for provider in (bench.BASELINE, bench.FINGERPRINT)]
    assert all(0 < r.p20 <= r.median <= r.p80 and r.unit == "ms" for r in rows)
    paths = bench.write_all(rows, tmp_path)
    assert [p.name for p in paths] == ["fingerprint_cost_cpu.csv", "fingerprint_cost_cpu.md",
                                       "fingerprint_cost_cpu.png"]
    with open(paths[0], newline="") as f:
        assert [float(r["median"]) for r in csv.DictReader(f)] == pytest.approx([r.median for r in rows])
    fingerprint = rows[1]
    ratio = fingerprint.median / rows[0].median
    assert f"| {bench.FINGERPRINT} | {fingerprint.shape} | {fingerprint.median:,.1f} ms" in paths[1].read_text()
    assert f"{ratio:.2f}x |" in paths[1].read_text() and paths[2].stat().st_size > 0
