"""The one network every trainer trains: torchvision's ResNet (fastssl.models.torchvision_resnet), CIFAR
stem below 64 px, scaled by the recipe's width, fc = Identity so it returns the features h.

Each runner trains this module object and saves its state dict; the common evaluator loads that file
strict into a fresh copy, so a backbone that is not exactly this network fails loudly.
"""
from __future__ import annotations

from torch import nn

from fastssl.bench.peers.recipe import Recipe
from fastssl.models.torchvision_compat import torchvision_resnet


def backbone(recipe: Recipe) -> nn.Module:
    return torchvision_resnet(recipe.arch, cifar_stem=recipe.cifar_stem, width=recipe.width)


def feature_dim(net: nn.Module) -> int:
    """Channels of the last stage's output: torchvision's ResNet leaves them in `inplanes`."""
    return net.inplanes
