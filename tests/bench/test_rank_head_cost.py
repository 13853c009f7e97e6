"""`python -m fastssl.bench.rank_head_cost` end to end at a tiny size: 2 gloo processes, its three files."""
import csv
import os
import platform
from pathlib import Path

import pytest
import torch

from fastssl.bench import rank_head_cost


@pytest.fixture(autouse=True)
def _importable_by_workers(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))


def test_tiny_run_writes_csv_markdown_and_plot(tmp_path, capsys):
    """Also: the caller's thread count is left as it was (it once stayed at 1, and a later test in the same
    process, comparing compiled with eager training, then ran on one thread)."""
    threads = torch.get_num_threads()
    code = rank_head_cost.main(["--worlds", "2", "--heads", "contrastive,svm tasks=W", "--batches", "8",
                                "--reps", "2", "--warmup", "0", "--out", str(tmp_path)])
    assert code == 0 and torch.get_num_threads() == threads
    with open(tmp_path / "rank_head_cost_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["provider"], r["shape"]) for r in rows} == {
        (rank_head_cost.BEFORE, "contrastive W=2 B=8"), (rank_head_cost.AFTER, "contrastive W=2 B=8"),
        (rank_head_cost.BEFORE, "svm tasks=W W=2 B=8"), (rank_head_cost.AFTER, "svm tasks=W W=2 B=8"),
        (rank_head_cost.GATHER, "W=2 B=8")}
    assert all(float(r["median"]) > 0 and r["unit"] == "ms" for r in rows)
    assert {r["device"] for r in rows} == {f"CPU {platform.machine()} x1 threads per process (W processes on {os.cpu_count()} cores)"}
    table = (tmp_path / "rank_head_cost_cpu.md").read_text()
    assert "| contrastive | 2 | 8 |" in table and "| svm tasks=W | 2 | 8 |" in table
    assert (tmp_path / "rank_head_cost_cpu.png").stat().st_size > 0
    assert "contrastive W=2 B=    8" in capsys.readouterr().out


def test_svm_runs_only_up_to_its_batch_cap():
    assert rank_head_cost.cases(["protonet", "svm tasks=1"], [256, 4096]) == [
        ("protonet", 256), ("protonet", 4096), ("svm tasks=1", 256)]
