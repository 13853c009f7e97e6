"""LightlyTrain: its one documented call, `lightly_train.pretrain(out=, data=, model=, method=, ...)`.

The network is the recipe's torchvision ResNet with the CIFAR stem, which no model-name string
expresses, so it goes in through LightlyTrain's documented custom-model path: a ModelWrapper giving
feature_dim, forward_features, forward_pool and get_model. The exported backbone
(out/exported_models/exported_last.pt, the wrapped model's state dict) is what gets evaluated.
LightlyTrain offers SimCLR (and DINO and distillation), not BYOL, MoCo or SimSiam.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastssl.bench.peers import installed_version, not_installed
from fastssl.bench.peers.network import backbone, feature_dim
from fastssl.bench.peers.recipe import Spec

NAME = "lightly-train"
METHODS = ("simclr",)


def version() -> str:
    return installed_version("lightly-train")


def unavailable() -> str | None:
    return not_installed("lightly-train")


def substitutions(spec: Spec) -> list[str]:
    return ["warm-up: LightlyTrain fixes it at min(10, epochs/10) epochs (the recipe's tenth, so equal); "
            "cosine ends at 0.001 x lr, not 0",
            "its own defaults kept where the recipe is silent: no weight decay on norm and bias parameters, "
            "checkpoint and export every epoch, TensorBoard and JSONL logs"]


class ResNetWrapper(nn.Module):
    """LightlyTrain's ModelWrapper protocol around the torchvision ResNet (fc = Identity)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._net = net
        self._dim = feature_dim(net)

    def feature_dim(self) -> int:
        return self._dim

    def forward_features(self, x: torch.Tensor) -> dict:
        n = self._net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return {"features": n.layer4(n.layer3(n.layer2(n.layer1(x))))}

    def forward_pool(self, x: dict) -> dict:
        return {"pooled_features": self._net.avgpool(x["features"])}

    def get_model(self) -> nn.Module:
        return self._net


def _transform_args(spec: Spec) -> dict:
    r = spec.recipe
    brightness, contrast, saturation, hue = r.jitter
    return {"image_size": (r.res, r.res), "random_resize": {"min_scale": r.crop_scale_min, "max_scale": 1.0},
            "random_flip": {"horizontal_prob": r.flip_p, "vertical_prob": 0.0},
            "color_jitter": {"prob": r.jitter_p, "strength": 1.0, "brightness": brightness, "contrast": contrast,
                             "saturation": saturation, "hue": hue},
            "random_gray_scale": r.grayscale_p, "gaussian_blur": None, "solarize": None,
            "normalize": {"mean": list(r.mean), "std": list(r.std)}}


def train(spec: Spec, device: torch.device) -> nn.Module:
    import lightly_train

    r = spec.recipe
    net = backbone(r)
    out = Path(spec.out) / "lightly_train"
    lightly_train.pretrain(
        out=str(out), data=f"{spec.data}/train", model=ResNetWrapper(net), method=r.method,
        method_args={"hidden_dim": r.projector_hidden, "output_dim": r.projector_out, "num_layers": 2,
                     "batch_norm": True, "temperature": r.temperature, "reference_batch_size": r.batch},
        epochs=r.epochs, batch_size=r.batch, num_workers=r.workers, devices=1, seed=r.seed,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        optim="sgd", optim_args={"lr": r.lr, "momentum": r.momentum, "weight_decay": r.weight_decay},
        transform_args=_transform_args(spec), overwrite=True)
    state = torch.load(out / "exported_models" / "exported_last.pt", map_location="cpu", weights_only=True)
    trained = backbone(r)
    trained.load_state_dict(state)   # strict: the export must be exactly the network that was given
    return trained
