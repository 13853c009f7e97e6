"""`fastssl eval` end to end: a tiny trained run on the embedded shapes, every protocol through the CLI."""
import json

import numpy as np
import pytest

from fastssl.cli import main
from fastssl.engine.metrics import read_metrics

def _eval(run_dir, protocol, *opts, capsys):
    args = ["eval", "--ckpt", str(run_dir / "last.pt"), "--protocol", protocol]
    args += [a for o in opts for a in ("--opt", o)]
    assert main(args) == 0
    captured = capsys.readouterr()
    line = captured.out.strip().splitlines()[-1]
    assert line.startswith(protocol) and line.endswith(str(run_dir / f"eval_{protocol}.json"))
    record = json.loads((run_dir / f"eval_{protocol}.json").read_text())
    assert record["protocol"] == protocol and record["step"] == 2 and record["dataset"] == "shapes"
    return record, captured.err


def test_knn_reproduces_the_training_monitor(run_dir, capsys):
    record, err = _eval(run_dir, "knn", capsys=capsys)
    assert record["settings"] == {"k": 20, "temperature": 0.1, "effective_k": 20}
    monitor = [r["knn_top1"] for r in read_metrics(run_dir / "metrics.jsonl") if "knn_top1" in r][-1]
    assert record["results"]["top1"] == pytest.approx(monitor, abs=1e-6)
    assert record["results"]["num_train"] == 512 and record["results"]["num_test"] == 256
    assert "features: train split, 512 images" in err


def test_linear(run_dir, capsys):
    record, err = _eval(run_dir, "linear", "weight_decays=[1e-4, 1e-2]", capsys=capsys)
    results = record["results"]
    assert 0 <= results["top1"] <= 1 and 0 <= results["best_val_top1"] <= 1
    assert record["settings"]["weight_decays"] == [1e-4, 1e-2] and record["settings"]["optimizer"] == "lbfgs"
    assert len(results["grid"]) == 4 and err.count("linear: lr=") == 4
    assert results["best_weight_decay"] in (1e-4, 1e-2) and results["feature_dim"] == 64


def test_fewshot(run_dir, capsys):
    record, err = _eval(run_dir, "fewshot", capsys=capsys)
    assert record["settings"]["episodes"] == 600 and record["settings"]["shots"] == [1, 5]
    assert record["settings"]["queries"] == 15 and record["settings"]["ways"] == 5
    for key in ("5way_1shot", "5way_5shot"):
        for clf in ("prototype", "ridge"):
            r = record["results"][key][clf]
            assert 0 <= r["mean"] <= 1 and 0 < r["ci95"] < 0.05
    assert err.count("fewshot: 5way_") == 2


def test_semi(run_dir, capsys):
    record, err = _eval(run_dir, "semi", "epochs=2", "batch_size=16", capsys=capsys)
    assert record["settings"]["epochs"] == 2 and record["settings"]["fractions"] == [0.01, 0.1]
    small, large = record["results"]["1%"], record["results"]["10%"]
    assert (small["num_labels"], large["num_labels"]) == (10, 50)   # 10 balanced classes of ~51
    for r in (small, large):
        assert 0 <= r["top1"] <= 1
        assert np.load(run_dir / r["indices_file"]).tolist() == r["indices"]
    assert err.count("semi 10%: epoch") == 2


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bad_checkpoint_is_a_clear_error_naming_it(run_dir, tmp_path, capsys, damage):
    ckpt = tmp_path / "last.pt"
    if damage == "truncated":
        (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
        ckpt.write_bytes((run_dir / "last.pt").read_bytes()[:1000])
    assert main(["eval", "--ckpt", str(ckpt), "--protocol", "knn"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and ("does not exist" if damage == "missing" else "truncated or corrupt") in err
    assert not (tmp_path / "eval_knn.json").exists()


def test_bad_option_fails_before_reading_the_checkpoint(tmp_path, capsys):
    assert main(["eval", "--ckpt", str(tmp_path / "none.pt"), "--protocol", "fewshot", "--opt", "ways=x"]) == 2
    assert "fewshot.ways='x': must be an integer" in capsys.readouterr().err
