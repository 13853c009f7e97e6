"""`fastssl bench checkpoint` end to end at a tiny model: its rows and its three files."""
import csv

import pytest

from fastssl.bench import checkpoint_check
from fastssl.config import ModelConfig


def test_rows_and_files_at_a_tiny_model(tmp_path):
    tiny = ModelConfig(width=0.125, projector_hidden=32, projector_out=16)
    rows = checkpoint_check.measure(reps=3, warmup=0, progress=lambda line: None, model_cfg=tiny)
    by = {(r.provider, r.mode, r.metric): r for r in rows}
    checked = [(checkpoint_check.CHECKED, "save"), (checkpoint_check.CHECKED, "load"),
               (checkpoint_check.OLD_FILE, "load")]
    operations = [(checkpoint_check.BASELINE, "save"), (checkpoint_check.BASELINE, "load"), *checked]
    assert set(by) == ({(p, m, metric) for p, m in operations for metric in ("time", "throughput")}
                       | {(p, m, "vs torch") for p, m in checked})
    megabytes = float(rows[0].shape.split(", ")[-1].removesuffix(" MB"))
    assert rows[0].shape.startswith("resnet18 width 0.125 + projector + LARS momentum")
    for provider, mode in operations:   # 3 samples: the median throughput is the size over the median time
        assert by[(provider, mode, "throughput")].median == pytest.approx(
            megabytes / (by[(provider, mode, "time")].median / 1e3), rel=0.005)   # the shape rounds the MB to 3 digits
    paths = checkpoint_check.write_all(rows, tmp_path)
    assert [p.name for p in paths] == ["checkpoint_check_cpu.csv", "checkpoint_check_cpu.md", "checkpoint_check_cpu.png"]
    with open(paths[0], newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    table = paths[1].read_text()
    ratio = by[(checkpoint_check.CHECKED, "load", "vs torch")]
    assert "| load | checked | " in table and f"{ratio.median:.2f}x ({ratio.p20:.2f}-{ratio.p80:.2f})" in table
    assert paths[2].stat().st_size > 0
