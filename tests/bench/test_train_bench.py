"""The benchmark harness (summaries, rows, outputs) and a tiny `fastssl bench train` end to end."""
import csv

import pytest
import torch

from fastssl.bench.harness import Row, summarize, write_csv, write_markdown
from fastssl.cli import main


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_is_median_and_interpolated_percentiles():
    # Hand-computed: sorted 1..5, p20 at position 0.8 -> 1.8, p80 at position 3.2 -> 4.2.
    assert summarize([5.0, 1.0, 4.0, 2.0, 3.0]) == pytest.approx((3.0, 1.8, 4.2))


def _row(provider, median):
    return Row("b", provider, "s", "fp32", "m", "images/s", median, median - 1, median + 1, "img/s",
               "CPU", "2.x", "3.x", "none", "abc", "2026-01-01T00:00:00Z")


def test_csv_round_trip_and_markdown_ratio_to_baseline(tmp_path):
    rows = [_row("torchvision", 400.0), _row("tensor", 1000.0)]
    write_csv(rows, tmp_path / "r.csv")
    back = read_csv(tmp_path / "r.csv")
    assert [r["provider"] for r in back] == ["torchvision", "tensor"] and float(back[1]["median"]) == 1000.0
    write_markdown(rows, tmp_path / "r.md", "t", "torchvision")
    table = (tmp_path / "r.md").read_text()
    assert "| torchvision | s | 400.0 img/s | 399.0 | 401.0 | 1.00x |" in table
    assert "| tensor | s | 1,000.0 img/s | 999.0 | 1,001.0 | 2.50x |" in table


def test_markdown_without_the_baseline_has_no_ratio(tmp_path):
    write_markdown([_row("tensor", 1000.0)], tmp_path / "r.md", "t", "torchvision")
    assert "| tensor | s | 1,000.0 img/s | 999.0 | 1,001.0 | — |" in (tmp_path / "r.md").read_text()


def test_bench_train_runs_one_backend_on_data_free_images(tmp_path):
    """The GPU run measures the tensor backend alone on data.dataset=random: no baseline, no drawing."""
    sets = ["data.dataset=random", "data.num_train=64", "data.num_test=16", "loader.batch_size=16",
            "model.projector_hidden=16", "model.projector_out=8", "augment.impl=reference"]
    args = ["bench", "train", "--backends", "tensor", "--steps", "1", "--windows", "2", "--warmup", "1",
            "--out", str(tmp_path)]
    assert main(args + [arg for s in sets for arg in ("--set", s)]) == 0
    (row,) = read_csv(tmp_path / "train_throughput_cpu.csv")
    assert row["provider"] == "tensor" and float(row["median"]) > 0 and row["shape"].startswith("2x16x32px")
    assert "| tensor |" in (tmp_path / "train_throughput_cpu.md").read_text()


VIT = "timm/vit_tiny_patch16_224={img_size: 32, patch_size: 4, depth: 1}"


def test_bench_train_measures_each_model_on_each_backend_in_one_process(tmp_path, monkeypatch):
    """--model twice: a row per (backend, model), each from a trainer that built the network it names
    (seen on the trainers themselves, not on the labels the benchmark writes)."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    from fastssl.bench import train_throughput
    from fastssl.models.resnet import BasicBlock, ResNet
    from fastssl.optim.lars import LARS

    built, real = {}, train_throughput.Trainer

    def spy(cfg, out_dir):
        trainer = real(cfg, out_dir)
        built[cfg.loader.backend, cfg.model.arch] = (trainer.model.encoder, trainer.optimizer)
        return trainer

    monkeypatch.setattr(train_throughput, "Trainer", spy)
    sets = ["data.dataset=random", "data.num_train=64", "data.num_test=16", "loader.batch_size=16",
            "loader.workers=0", "model.projector_hidden=16", "model.projector_out=8", "augment.impl=reference"]
    args = ["bench", "train", "--backends", "tensor,torchvision", "--model", "resnet18", "--model", VIT,
            "--steps", "1", "--windows", "2", "--warmup", "1", "--out", str(tmp_path)]
    assert main(args + [arg for s in sets for arg in ("--set", s)]) == 0
    rows = read_csv(tmp_path / "train_backbones_cpu.csv")
    vit_label = "timm/vit_tiny_patch16_224 {img_size: 32, patch_size: 4, depth: 1}"
    assert [r["provider"] for r in rows] == ["tensor resnet18 w0.125", "torchvision resnet18 w0.125",
                                             f"tensor {vit_label}", f"torchvision {vit_label}"]
    for r in rows:
        assert r["shape"] == "2x16x32px" and float(r["p20"]) <= float(r["median"]) <= float(r["p80"])
        assert float(r["median"]) > 0 and r["device"].startswith("CPU")
    assert not (tmp_path / "train_throughput_cpu.csv").exists()      # the backend table is not overwritten
    for backend in ("tensor", "torchvision"):
        resnet, resnet_optim = built[backend, "resnet18"]
        assert isinstance(resnet, ResNet) and any(isinstance(m, BasicBlock) for m in resnet.modules())
        assert isinstance(resnet_optim, LARS)                         # optim.name=auto: LARS for a ResNet
        vit, vit_optim = built[backend, "timm/vit_tiny_patch16_224"]
        assert isinstance(vit, VisionTransformer) and len(vit.blocks) == 1 and vit.embed_dim == 192
        assert tuple(vit.patch_embed.patch_size) == (4, 4)
        assert isinstance(vit_optim, torch.optim.AdamW)               # and AdamW where there is attention
    table = (tmp_path / "train_backbones_cpu.md").read_text()
    ratio = float(rows[2]["median"]) / float(rows[1]["median"])    # against the first model on the baseline
    assert "| vs torchvision resnet18 w0.125 |" in table and f"| {ratio:.2f}x |" in table
    assert (tmp_path / "train_backbones_cpu.png").stat().st_size > 5_000


@pytest.mark.slow
def test_bench_train_writes_rows_for_each_backend(tmp_path, capsys):
    sets = ["data.num_train=512", "data.num_test=64", "loader.batch_size=64", "loader.workers=0",
            "knn.k=10", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference"]
    args = ["bench", "train", "--steps", "2", "--windows", "3", "--warmup", "1", "--out", str(tmp_path)]
    assert main(args + [arg for s in sets for arg in ("--set", s)]) == 0
    rows = read_csv(tmp_path / "train_throughput_cpu.csv")
    assert [r["provider"] for r in rows] == ["torchvision", "tensor"]
    for r in rows:
        assert float(r["p20"]) <= float(r["median"]) <= float(r["p80"]) and float(r["median"]) > 0
        assert r["device"].startswith("CPU") and r["commit"] and r["shape"].startswith("2x64x32px")
    ratio = float(rows[1]["median"]) / float(rows[0]["median"])
    assert f"{ratio:.2f}x |" in (tmp_path / "train_throughput_cpu.md").read_text()
    assert (tmp_path / "train_throughput_cpu.png").stat().st_size > 5_000


@pytest.mark.parametrize("args,message", [
    (["--backends", "tensor,ffcv2"], "--backends 'tensor,ffcv2': must list backends of"),
    (["--backends", ","], "--backends ',': must list backends of"),
    (["--steps", "0"], "--steps=0: must be >= 1"),
    (["--windows", "0"], "--windows=0: must be >= 1"),
    (["--warmup", "-1"], "--warmup=-1: must be >= 0"),
    (["--model", "resnet 18"], "--model 'resnet 18': model.arch='resnet 18': must be one of resnet18"),
    (["--model", "timm/vit_small_patch16_224={img_size: 32"], "--model 'timm/vit_small_patch16_224={img_size: "
     "32': kwargs: not valid YAML"),
    (["--model", "timm/vit_small_patch16_224=[32]"], "model.kwargs=[32]: must be a mapping of names to values"),
    (["--model", "resnet18", "--model", "resnet18"], "--model 'resnet18': given twice"),
])
def test_bench_train_rejects_bad_arguments_before_any_work(args, message, capsys):
    assert main(["bench", "train", *args]) == 2
    assert message in capsys.readouterr().err
