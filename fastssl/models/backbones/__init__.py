"""Backbone families behind one contract: what turns `model.arch` into the encoder f (images -> h).

A family is one module here (found by file name, as export formats are): `resnet` (fastssl's own
ResNets), `torchvision` (`torchvision/<name>`), `timm` (`timm/<name>`), `module` (an nn.Module given
to `fastssl.train`). Each defines `owns(arch) -> bool`, `build(model_cfg, image_size, module) ->
nn.Module` (the encoder, classifier removed, returning (B, D)) and `library(model_cfg, image_size)`
(what `fastssl export` loads a state dict into, or None). Shared steps live here: the feature width
found by one probe forward, the `model.init` weights, the image-size check. The model layer names no
family.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch import nn

from fastssl.loaders.rules import ConfigError, shown

PROBE_BATCH = 2       # images of the probe forward (BatchNorm in eval mode takes any batch; 2 shows a batch axis)
CIFAR_STEM_MAX_SIZE = 64   # model.cifar_stem null: ResNets get the CIFAR stem at images up to this side


def families() -> dict[str, ModuleType]:
    """Every family module, by name."""
    return {info.name: importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)}


def family_of(arch: str) -> ModuleType:
    """The family that owns `arch`; ConfigError listing the forms otherwise."""
    for family in families().values():
        if family.owns(arch):
            return family
    forms = "; ".join(family.FORM for family in families().values())
    raise ConfigError(f"model.arch={shown(arch)}: no backbone family builds it (forms: {forms})")


def cifar_stem(model_cfg, image_size: int | None) -> bool:
    """model.cifar_stem with null resolved: on for small images (or where no size is known, as before it
    could be null), off for large ones."""
    if model_cfg.cifar_stem is not None:
        return model_cfg.cifar_stem
    return image_size is None or image_size <= CIFAR_STEM_MAX_SIZE


def refuse_cifar_stem(model_cfg, why: str) -> None:
    """ConfigError where model.cifar_stem=true reaches a family that has no such stem."""
    if model_cfg.cifar_stem:
        raise ConfigError(f"model.cifar_stem=true: {why}; the CIFAR stem (3x3 first convolution, no max-pool) "
                          "exists for fastssl's and torchvision's ResNets only (set model.cifar_stem=false)")


@dataclass
class Library:
    """Where an exported state dict loads: `construct()` builds the library's model with its classifier
    removed, `build` says the same in code for the user, `state_dict(encoder)` gives the weights under
    the library's own names."""
    name: str
    build: str
    construct: Callable[[], nn.Module]
    state_dict: Callable[[nn.Module], dict] = lambda encoder: encoder.state_dict()


def build(model_cfg, image_size: int | None = None, module: nn.Module | None = None, init: bool = True) -> nn.Module:
    """The encoder of `model_cfg` with `feature_dim` set, weights from model.init when `init`."""
    encoder = family_of(model_cfg.arch).build(model_cfg, image_size, module)
    encoder.feature_dim = probe_width(encoder, model_cfg.arch, image_size)
    if init and model_cfg.init:
        load_init(encoder, Path(model_cfg.init), getattr(encoder, "removed", ()))
    return encoder


def library(model_cfg, image_size: int | None) -> Library | None:
    return family_of(model_cfg.arch).library(model_cfg, image_size)


def probe_width(encoder: nn.Module, arch: str, image_size: int | None) -> int:
    """The encoder's output width, from one forward of PROBE_BATCH blank images in eval mode (no BN
    statistics change); ConfigError where it does not give one vector per image."""
    if hasattr(encoder, "feature_dim"):
        return encoder.feature_dim
    out = _probe(encoder, arch, image_size or 224, "check data.image_size and model.kwargs")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != PROBE_BATCH:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model.arch={shown(arch)}: must map (B, 3, H, W) images to (B, D) features, gave {shape}")
    return int(out.shape[1])


def check_view_sizes(encoder: nn.Module, arch: str, sizes: list[int]) -> None:
    """Multi-crop: the encoder takes every view size (augment.crops), checked by a probe forward at each
    before any image is read; a ViT built for one size needs timm's dynamic_img_size."""
    for side in sorted(set(sizes)):
        _probe(encoder, arch, side, f"augment.crops gives {side} px views; a ViT takes them with model.kwargs "
               "dynamic_img_size: true")


def _probe(encoder: nn.Module, arch: str, side: int, hint: str):
    was_training = encoder.training
    with torch.no_grad():
        try:
            out = encoder.eval()(torch.zeros(PROBE_BATCH, 3, side, side))
        except (RuntimeError, AssertionError, ValueError) as e:
            raise ConfigError(f"model.arch={shown(arch)}: does not take {side}x{side} images "
                              f"({' '.join(str(e).split())[:200]}); {hint}") from None
        finally:
            encoder.train(was_training)
    return out


def load_init(encoder: nn.Module, path: Path, removed: tuple[str, ...]) -> None:
    """model.init: a state dict (torch.save, loaded with weights_only=True, bare or under 'state_dict'; or
    safetensors) into the encoder. Keys of the removed classifier are passed over; any other missing or
    extra key is a ConfigError naming the first few, as a silently partial start would be."""
    from fastssl.checkpoint import load_state_file   # the one reader of weight files
    state = load_state_file(path, "model.init")
    state = {k: v for k, v in state.items() if not k.startswith(tuple(f"{r}." for r in removed))}
    own = encoder.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
                if k in state and state[k].shape != v.shape]
    if missing or unexpected or reshaped:
        wrong = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]] + reshaped[:3]
        raise ConfigError(f"model.init={shown(str(path))}: its keys do not fit the model ({', '.join(wrong)}; "
                          f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape)")
    encoder.load_state_dict(state)


def check_patch_size(arch: str, encoder: nn.Module, image_size: int | None) -> None:
    """A patch-embedding network (its `patch_embed` has `img_size` and `patch_size`, timm's convention) takes
    only the size it was built for: a one-line ConfigError naming both, before any image is read."""
    embed = getattr(encoder, "patch_embed", None)
    built, patch = getattr(embed, "img_size", None), getattr(embed, "patch_size", None)
    if image_size is None or built is None or patch is None:
        return
    built, patch = tuple(built), tuple(patch)
    if built != (image_size, image_size) or image_size % patch[0] or image_size % patch[1]:
        raise ConfigError(f"data.image_size={image_size}: {arch} was built for {built[0]}x{built[1]} images in "
                          f"{patch[0]}x{patch[1]} patches; set model.kwargs img_size to data.image_size (a "
                          f"multiple of patch_size), e.g. model.kwargs='{{img_size: {image_size}, patch_size: "
                          f"{patch[0] if image_size % patch[0] == 0 else 4}}}'")


def last_linear(model: nn.Module) -> str | None:
    """The name of the last nn.Linear in `model`'s definition order: a classification model's classifier."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
