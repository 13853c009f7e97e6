"""A trained run's networks for export, and what they are (the metadata every format writes).

The run is read by fastssl.trained_run (as `fastssl eval` and `fastssl features` read it). The momentum
network (BYOL's target, MoCo's key encoder) is found through `Method.momentum_network`, so no method is
named here.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import fastssl
from fastssl import methods
from fastssl import config as config_mod
from fastssl.checkpoint import CheckpointError
from fastssl.export import ExportError
from fastssl.models import SSLNet, backbones
from fastssl.trained_run import Trained, load_trained, load_weights

CHECK_BATCH = 3           # images a written file is checked on; traced/exported with 2, so batch is not baked in
RELATIVE_TOLERANCE = 1e-4  # of the outputs' largest magnitude: float32 rounding, not a wrong weight


def momentum_network(trained: Trained) -> SSLNet:
    """The method's momentum copy of the online network, from the checkpoint's `method` state; a
    ConfigError naming the method when it keeps none."""
    name = trained.cfg.method.name
    attribute = methods.method_class(name).momentum_network
    if attribute is None:
        having = [n for n, cls in methods.methods().items() if cls.momentum_network]
        raise config_mod.ConfigError(f"--network target: method {name!r} keeps no momentum network; only a method "
                                     f"that sets Method.momentum_network has one ({', '.join(having)})")
    prefix = attribute + "."
    weights = {key.removeprefix(prefix): value for key, value in trained.state.get("method", {}).items()
               if key.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"checkpoint {str(trained.ckpt)!r}: its method state holds no {prefix}* weights "
                              f"(method {name!r} keeps its momentum network there)")
    model = copy.deepcopy(trained.model)   # the online network's shape, whatever family built it
    load_weights(model, weights, trained.ckpt, f"method's {attribute} weights")
    return model


def git_commit(run_dir: Path) -> str:
    """The commit the run started from, as the trainer recorded it in RUN/env.json (checkpoints hold none)."""
    try:
        return json.loads((run_dir / "env.json").read_text())["git_commit"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown (the run directory holds no readable env.json)"


def _outputs(module: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module(images)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@dataclass
class Exported:
    """What a format writes: the network (eval mode, CPU, float32, contiguous weights), its metadata (str ->
    str) and the batch a written file is checked on (seeded, at the run's image size)."""
    module: nn.Module   # the ResNet (part encoder: h) or the SSLNet (encoder+projector: (h, z))
    cfg: config_mod.Config
    part: str
    metadata: dict[str, str]
    images: torch.Tensor

    def reference(self) -> tuple[torch.Tensor, ...]:
        return _outputs(self.module, self.images)

    def untrained(self) -> nn.Module:
        """A network of the exported one's shape with every weight set to NaN, to load a written file into:
        a weight the file does not carry shows in the check."""
        model = copy.deepcopy(self.module)
        with torch.no_grad():
            for tensor in model.state_dict().values():   # what a file carries; not buffers made at build
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
        return model

    def check(self, outputs, how: str, reference: tuple[torch.Tensor, ...] | None = None) -> str:
        """Compares the written model's outputs on `images` with the network's (all of them, or
        `reference`); returns the report line, ExportError beyond float32 rounding."""
        expected = self.reference() if reference is None else reference
        got = tuple(torch.as_tensor(o) for o in (outputs if isinstance(outputs, (tuple, list)) else (outputs,)))
        if [tuple(o.shape) for o in got] != [tuple(e.shape) for e in expected]:
            raise ExportError(f"{how}: outputs of shapes {[tuple(o.shape) for o in got]}, the network's are "
                              f"{[tuple(e.shape) for e in expected]}")
        error = max(float((o.float() - e).abs().max()) for o, e in zip(got, expected))
        scale = max(float(e.abs().max()) for e in expected)
        line = f"check: max abs error {error:.3g} vs fastssl's network on {len(self.images)} images ({how})"
        if not error <= RELATIVE_TOLERANCE * max(1.0, scale):
            raise ExportError(f"{line}: beyond float32 rounding of outputs up to {scale:.3g}")
        return line


def describe(trained: Trained, part: str, network: str) -> dict[str, str]:
    """What the exported network is and where it came from, as strings (safetensors and ONNX take only those)."""
    m, side = trained.cfg.model, trained.cfg.data.image_size
    stem = backbones.cifar_stem(m, side)
    return {"arch": m.arch, "kwargs": json.dumps(m.kwargs), "width": str(m.width), "cifar_stem": json.dumps(stem),
            "stem": "cifar" if stem else "imagenet", "image_size": str(side),
            "part": part, "network": network, "method": trained.cfg.method.name,
            "step": str(int(trained.state["run"]["step"])), "checkpoint": str(trained.ckpt),
            "git_commit": git_commit(trained.ckpt.parent), "fastssl_version": fastssl.__version__,
            "config": config_mod.dump_yaml(trained.cfg)}


def prepare(run_dir: str | Path, part: str, network: str, ckpt: str = "last.pt",
            module: nn.Module | None = None) -> Exported:
    """RUN/<ckpt>'s online or momentum network, cut to `part`, ready for a format to write (`module`: a
    fresh instance of the user's network, for a run of model.arch=module)."""
    trained = load_trained(Path(run_dir) / ckpt, module=module)
    net = trained.model if network == "online" else momentum_network(trained)
    net = net.to(memory_format=torch.contiguous_format).eval()   # safetensors takes contiguous tensors only
    module = net.encoder if part == "encoder" else net
    side = trained.cfg.data.image_size
    images = torch.randn(CHECK_BATCH, 3, side, side, generator=torch.Generator().manual_seed(0))
    return Exported(module, trained.cfg, part, describe(trained, part, network), images)
