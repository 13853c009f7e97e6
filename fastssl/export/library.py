"""What the library formats (torchvision, timm) share: the encoder's state dict under its library's own
names, written beside the metadata and checked by loading it strict into the library's constructor."""
from __future__ import annotations

import io

import torch

from fastssl.export import ExportError
from fastssl.export.networks import Exported
from fastssl.loaders.atomic import staged_bytes
from fastssl.loaders.rules import ConfigError
from fastssl.models import backbones


def own_library(exported: Exported, fmt: str) -> backbones.Library:
    """The run's backbone library where it is `fmt`; ConfigError naming the format that fits otherwise."""
    library = backbones.library(exported.cfg.model, exported.cfg.data.image_size)
    if library is None or library.name != fmt:
        fits = f"--format {library.name}" if library is not None else "--format safetensors, torchscript or onnx"
        raise ConfigError(f"--format {fmt}: the run's backbone {exported.cfg.model.arch} does not load into {fmt} "
                          f"(use {fits})")
    return library


def write_state_dict(exported: Exported, path, library: backbones.Library) -> list[str]:
    """torch.save({"state_dict", "metadata"}) of the encoder under the library's names; the staged file is
    loaded strict into `library.construct()` and its features compared with the network's before it lands."""
    if exported.part != "encoder":
        raise ExportError(f"--part {exported.part}: the {library.name} format holds the encoder only for "
                          f"{exported.cfg.model.arch}; write encoder+projector with --format safetensors")
    metadata = {**exported.metadata, "format": library.name, "build": library.build}
    data = io.BytesIO()   # in memory: torch.save to a path on a full disk raises its own error, not ENOSPC
    torch.save({"state_dict": library.state_dict(exported.module), "metadata": metadata}, data)
    with staged_bytes(path, data.getvalue()) as tmp:
        loaded = library.construct()
        loaded.load_state_dict(torch.load(tmp, weights_only=True)["state_dict"])   # strict
        with torch.no_grad():
            outputs = loaded.eval()(exported.images)
        line = exported.check(outputs, f"{library.name}'s own model, loaded strict")
    return [f"load: torch.load(FILE, weights_only=True)['state_dict'] into {library.build}", line]
