"""torchvision: a state dict for torchvision's model. A `torchvision/<name>` backbone's keeps its own names and
loads strict into `torchvision.models.<name>()` with the classifier replaced by Identity (export/library.py).
fastssl's ResNets map onto torchvision's ResNet (fastssl/models/torchvision_compat.py), as follows.

The file is `torch.save({"state_dict": ..., "metadata": {...}})`, loadable with weights_only=True. The
state dict loads with strict=True into `torchvision.models.resnet18/34/50()` at model.width 1.0 once
conv1, maxpool and fc are replaced as the metadata's `adapt` says (the CIFAR stem: a 3x3 stride-1 conv1
and no max-pool; fc: Identity, so the model returns the features h, or the projector for part
encoder+projector, so it returns z); at other widths into `fastssl.models.torchvision_resnet(...)`,
torchvision's class built at the scaled widths.
"""
from __future__ import annotations

import copy
import io

import torch
from torch import nn

from fastssl.export.networks import Exported
from fastssl.loaders.atomic import staged_bytes
from fastssl.export.library import own_library, write_state_dict
from fastssl.models import SSLNet, backbones
from fastssl.models.resnet import ResNet
from fastssl.models.torchvision_compat import as_code, copy_to_torchvision, torchvision_resnet

SUFFIX = ".torchvision.pt"


def _model(exported: Exported) -> nn.Module:
    """torchvision's ResNet of the exported network's shape; fc a plain nn.Sequential copy of the projector
    (encoder+projector) or Identity."""
    m, net = exported.cfg.model, exported.module
    fc = nn.Sequential(*copy.deepcopy(list(net.projector))) if isinstance(net, SSLNet) else None
    return torchvision_resnet(m.arch, cifar_stem=_stem(exported), width=m.width, fc=fc)


def _stem(exported: Exported) -> bool:
    return backbones.cifar_stem(exported.cfg.model, exported.cfg.data.image_size)


def write(exported: Exported, path) -> list[str]:
    library = own_library(exported, "torchvision")
    if not isinstance(getattr(exported.module, "encoder", exported.module), ResNet):   # not fastssl's ResNet
        return write_state_dict(exported, path, library)
    model = copy_to_torchvision(exported.module, _model(exported))
    m = exported.cfg.model
    build = (f"torchvision.models.{m.arch}()" if m.width == 1.0 else
             f"fastssl.models.torchvision_resnet({m.arch!r}, cifar_stem={_stem(exported)}, width={m.width})")
    adapt = "; ".join(f"model.{name} = {as_code(getattr(model, name))}" for name in ("conv1", "maxpool", "fc"))
    metadata = {**exported.metadata, "format": "torchvision", "build": build, "adapt": adapt}
    data = io.BytesIO()   # in memory: torch.save to a path on a full disk raises its own error, not ENOSPC
    torch.save({"state_dict": model.state_dict(), "metadata": metadata}, data)
    with staged_bytes(path, data.getvalue()) as tmp:
        loaded = _model(exported)
        loaded.load_state_dict(torch.load(tmp, weights_only=True)["state_dict"])   # strict
        with torch.no_grad():
            outputs = loaded.eval()(exported.images)
        line = exported.check(outputs, "torchvision ResNet", reference=exported.reference()[-1:])
    return [f"load: torch.load(FILE, weights_only=True)['state_dict'] into {build}",
            f"needs the {metadata['stem']} stem: {adapt}", line]
