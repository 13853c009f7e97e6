"""`fastssl bench heads` end to end on the embedded shapes data: every number in its outputs is the one
the run folders hold (kNN from metrics.jsonl, linear from eval_linear.json), the "beats random init"
column follows its rule, and finished variants are reused rather than retrained."""
import csv
import json

import pytest

from fastssl.bench.head_comparison import _ci95
from fastssl.cli import main

SETS = ["data.dataset=shapes", "data.num_train=256", "data.num_test=128", "loader.batch_size=64", "train.max_steps=3",
        "knn.k=10", "method.loss_impl=reference", "augment.impl=reference", "train.precision=fp32",
        "train.device=cpu"]


def run_bench(tmp_path, variants):
    args = ["bench", "heads", "--data", str(tmp_path), "-c", "configs/quickstart.yaml", "--epochs", "1",
            "--variants", variants, "--work", str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "heads")]
    for s in SETS:
        args += ["--set", s]
    assert main(args) == 0
    with open(tmp_path / "out" / "heads.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_outputs_hold_the_run_folders_numbers_and_reuse_finished_variants(tmp_path):
    rows = run_bench(tmp_path, "protonet + task aug + rot pred")
    assert [r["variant"] for r in rows] == ["random init", "protonet + task aug + rot pred"]
    for row, folder in zip(rows, ("random_init", "protonet_plus_task_aug_plus_rot_pred")):
        run = tmp_path / "runs" / folder
        knn = [json.loads(line)["knn_top1"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if "knn_top1" in line][-1]
        linear = json.loads((run / "eval_linear.json").read_text())["results"]["top1"]
        assert float(row["knn_top1"]) == knn and float(row["linear_top1"]) == linear
        assert float(row["linear_ci95"]) == pytest.approx(1.96 * (linear * (1 - linear) / 128) ** 0.5, rel=1e-12)
        assert row["commit"] and row["device"].startswith("CPU")
    assert int(rows[0]["steps"]) == 0 and int(rows[1]["steps"]) == 3
    trained = rows[1]
    base = rows[0]
    beats = (float(trained["knn_top1"]) > float(base["knn_top1"]) + float(base["knn_ci95"])
             and float(trained["linear_top1"]) > float(base["linear_top1"]) + float(base["linear_ci95"]))
    table = (tmp_path / "out" / "heads.md").read_text()
    assert f"| {'yes' if beats else 'no'} |" in table.splitlines()[-3]
    assert (tmp_path / "out" / "heads.png").stat().st_size > 0
    stamp = (tmp_path / "runs" / "protonet_plus_task_aug_plus_rot_pred" / "last.pt").stat().st_mtime_ns
    again = run_bench(tmp_path, "protonet + task aug + rot pred")
    assert again[1]["knn_top1"] == trained["knn_top1"]
    assert (tmp_path / "runs" / "protonet_plus_task_aug_plus_rot_pred" / "last.pt").stat().st_mtime_ns == stamp


def test_binomial_interval():
    assert _ci95(0.5, 10_000) == pytest.approx(1.96 * 0.005)


def test_unknown_variant_is_refused_before_any_training(tmp_path, capsys):
    assert main(["bench", "heads", "--data", str(tmp_path), "--variants", "simclr_v9", "--work", str(tmp_path / "runs")]) == 2
    assert "error: --variants: variant 'simclr_v9': must be 'random init' or a head" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _comparison(tmp_path, name, rows, commit):
    from fastssl.bench.head_comparison import Result, write_all
    ctx = {"device": "CPU", "torch": "2", "commit": commit, "date": f"2026-12-0{len(commit)}T00:00:00Z"}
    results = [Result(v, knn, knn + 0.01, 0.01, 0.01, 60.0, 10, 0.25) for v, knn in rows]
    return write_all(results, tmp_path / name, f"fastssl bench heads --variants {name}", ctx)[0].with_suffix("")


def test_merge_adds_new_variants_and_replaces_only_those_named(tmp_path):
    """byol retrained after a change takes its old row's place (with its own command and commit);
    moco, in both, keeps the earlier row unless named; dino is added at the end."""
    from fastssl.bench.head_comparison import merge, read_comparison
    into = _comparison(tmp_path, "into", [("random init", 0.25), ("byol", 0.33), ("moco", 0.40)], "aaa")
    new = _comparison(tmp_path, "new", [("random init", 0.25), ("byol", 0.36), ("moco", 0.41), ("dino", 0.38)],
                      "bbbb")
    said = []
    merge(new, into, replace=("byol",), progress=said.append)
    rows = read_comparison(into)
    assert [(r.variant, r.knn_top1, s.ctx["commit"]) for r, s in rows] == [
        ("random init", 0.25, "aaa"), ("byol", 0.36, "bbbb"), ("moco", 0.40, "aaa"), ("dino", 0.38, "bbbb")]
    assert "byol: replaced (kNN 0.3300 -> 0.3600, linear 0.3400 -> 0.3700)" in said
    with pytest.raises(ValueError, match="--replace swav: each must be a variant of both"):
        merge(new, into, replace=("swav",))
