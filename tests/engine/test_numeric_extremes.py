"""Numbers the config accepts must run: each numeric field at the edge of its rule trains two steps with
finite losses; never a traceback from inside the step.

The values below each passed validation before their bounds existed and then failed inside the step
(optim.lr=1e308: an overflow in LARS; a temperature of 5e-324: scale=inf in sim_xent; ridge_lambda
1e-300: 0 in fp32; svm's C at 1e308: index -1 in its projection); their refusals are in
tests/test_config_hostile.py, and here the bounds themselves are shown to compute."""
import math

import pytest
import torch

from fastssl.cli import main
from fastssl.config import MAX_DIM, ModelConfig, load_config
from fastssl.engine.metrics import read_metrics
from fastssl.models import build_model
from fastssl.optim.recipe import resolve

TINY = ["data.num_train=64", "data.num_test=32", "data.image_size=16", "loader.batch_size=16", "train.max_steps=2",
        "train.log_every=1", "train.precision=fp32", "train.device=cpu", "knn.k=5", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference"]
EDGES = [
    ["optim.lr=1e6"],
    ["method.contrastive.temperature=1e-4"], ["method.contrastive.temperature=1e4"], ["knn.temperature=1e-4"],
    ["method.name=protonet", "method.protonet.temperature=1e-4"],
    ["method.name=moco", "method.moco.queue_size=64", "method.moco.temperature=1e-4"],
    ["method.name=r2d2", "method.r2d2.temperature=1e-4", "method.r2d2.ridge_lambda=1e-6"],
    ["method.name=r2d2", "method.r2d2.ridge_lambda=1e6"],
    ["method.name=svm", "method.svm.temperature=1e-4", "method.svm.c=1e-6"], ["method.name=svm", "method.svm.c=1e6"],
    ["task.query_mix=mixup", "task.query_mix_alpha=1e308"], ["task.query_mix=cutmix", "task.query_mix_alpha=5e-324"],
]


@pytest.mark.parametrize("edge", EDGES, ids=[" ".join(e) for e in EDGES])
def test_a_value_at_the_edge_of_its_rule_trains(tmp_path, capsys, edge):
    """Two steps with finite losses, at the learning rate the config gave: 64 images in batches of 16 are
    4 steps an epoch, so the default one-epoch warm-up gives step 1 the rate lr * 2 / 4."""
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), *[a for o in TINY + edge for a in ("--set", o)]])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err and captured.out.startswith("knn_top1="), captured.err
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2] and all(math.isfinite(r["loss"]) for r in logged)
    saved = load_config(run / "config.yaml")   # lr null: the recipe's (LARS 1.0 for this ResNet)
    base = resolve(saved.optim, torch.nn.Identity(), saved.loader.batch_size).lr
    assert logged[0]["lr"] == pytest.approx(base * 2 / 4, rel=1e-12)


def test_the_widest_projector_allowed_needs_no_matrix_over_1_gib():
    """At the old bound (65536) a 3-layer projector held a 65536 x 65536 matrix: 16 GiB in fp32."""
    cfg = ModelConfig(arch="resnet50", width=8, projector_hidden=MAX_DIM, projector_out=MAX_DIM, projector_layers=3)
    with torch.device("meta"):
        model = build_model(cfg)
    largest = max(p.numel() for p in model.projector.parameters())
    assert largest == MAX_DIM * MAX_DIM and largest * 4 <= 2**30
