"""fastssl itself: `fastssl train` with the recipe as --set overrides, on one data backend, then
`fastssl export --format torchvision` of the online encoder, the file the evaluator loads.

Run through fastssl.cli.main in the child process, exactly the command a user types; the overrides
are printed in the report so the run can be repeated by hand.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastssl.bench.peers import installed_version
from fastssl.bench.peers.network import backbone
from fastssl.bench.peers.recipe import Spec

NAME = "fastssl"
METHODS = ("simclr", "byol")
BACKENDS = ("tensor", "torchvision", "ffcv", "dali")
METHOD_NAMES = {"simclr": "contrastive", "byol": "byol"}


def version() -> str:
    return installed_version("fastssl")


def substitutions(spec: Spec) -> list[str]:
    notes = ["kNN of the encoder at random init and at the end (fastssl train's default monitor), "
             "checkpoint every epoch",
             "model.zero_init_residual=false and model.per_view_bn=true (fastssl's defaults are true and "
             "false): torchvision's init and per-view BatchNorm statistics, as every peer has them"]
    if spec.recipe.method == "byol":
        notes.append("BYOL loss the paper's L + L~ (two terms 2 - 2 cos), run at half the recipe's lr and twice its "
                     "weight decay: with SGD the updates of twice the gradient of lightly's example loss (-cos, the "
                     "mean of its two terms) at equal lr, as the committed peers rows were trained")
    return notes


def overrides(spec: Spec) -> list[str]:
    """The `--set` list that makes `fastssl train` run the recipe."""
    r = spec.recipe
    brightness, contrast, saturation, hue = r.jitter
    method = METHOD_NAMES[r.method]
    sets = {
        "data.dataset": "imagefolder", "data.path": spec.data, "data.image_size": r.res,
        "loader.backend": spec.backend, "loader.batch_size": r.batch, "loader.views": r.views,
        "loader.workers": r.workers,
        "augment.crop_scale_min": r.crop_scale_min, "augment.crop_scale_max": 1.0, "augment.flip_p": r.flip_p,
        "augment.jitter_p": r.jitter_p, "augment.brightness": brightness, "augment.contrast": contrast,
        "augment.saturation": saturation, "augment.hue": hue, "augment.grayscale_p": r.grayscale_p,
        "augment.blur_p": 0.0, "augment.solarize_p": 0.0,
        "model.arch": r.arch, "model.cifar_stem": r.cifar_stem, "model.width": r.width,
        "model.projector_hidden": r.projector_hidden, "model.projector_out": r.projector_out,
        "model.projector_layers": 2, "model.projector_bn": True, "model.projector_out_bn": r.projector_out_bn,
        # the recipe's network is torchvision's ResNet, initialised as torchvision does (no zero-init
        # residual gamma), and every peer's loop forwards each view alone (per-view BN statistics)
        "model.zero_init_residual": False, "model.per_view_bn": True,
        "method.name": method,
        "optim.name": "sgd", "optim.lr": r.lr, "optim.momentum": r.momentum, "optim.weight_decay": r.weight_decay,
        "optim.warmup_epochs": r.epochs * r.warmup_fraction,
        "train.epochs": r.epochs, "train.seed": r.seed, "knn.every_epochs": 0,
    }
    if r.method == "simclr":
        sets["method.contrastive.temperature"] = r.temperature
    if r.method == "byol":
        # the paper's loss is twice the mean these rows were trained with: SGD's update is unchanged at lr / 2
        # and weight decay x 2 (tests/test_byol.py shows it bitwise)
        sets["optim.lr"], sets["optim.weight_decay"] = r.lr / 2, r.weight_decay * 2
        sets["method.byol.momentum"] = r.ema_start
        sets["method.byol.predictor_hidden"] = r.projector_hidden
    if spec.backend == "ffcv":
        sets["loader.beton"] = spec.beton
    return [f"{key}={value}" for key, value in sets.items()]


def train(spec: Spec, device: torch.device) -> nn.Module:
    from fastssl.cli import main
    from fastssl.export.exporter import export

    run = Path(spec.out) / "run"
    args = ["train", "--out", str(run)]
    for item in overrides(spec):
        args += ["--set", item]
    if main(args) != 0:
        raise RuntimeError(f"fastssl train {' '.join(args)} failed")
    path, _ = export(run, "torchvision", "encoder", "online", "last.pt", Path(spec.out) / "encoder.torchvision.pt")
    trained = backbone(spec.recipe)
    trained.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return trained
