"""ONNX: torch.onnx.export's torch.export-based exporter (the default since PyTorch 2.9, and the only one
that is not deprecated; the legacy TorchScript exporter is faster but warns that it will be removed),
with a dynamic batch dimension; input `images`, outputs `features` (and `projection`). The metadata goes
into the model's metadata_props. Checked with onnx.checker, then run with onnxruntime where installed."""
from __future__ import annotations

import torch

from fastssl.config import ConfigError
from fastssl.export.networks import Exported
from fastssl.loaders.atomic import atomic_path

SUFFIX = ".onnx"


def write(exported: Exported, path) -> list[str]:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter builds the graph with it)
    except ImportError as e:
        raise ConfigError(f"--format onnx needs the onnx and onnxscript packages: pip install 'fastssl[onnx]' "
                          f"({e})") from None
    outputs = ["features"] if exported.part == "encoder" else ["features", "projection"]
    program = torch.onnx.export(exported.module, (exported.images[:2],), dynamo=True, verbose=False,
                                input_names=["images"], output_names=outputs,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.model.metadata_props.update({**exported.metadata, "format": "onnx"})
    weights = sum(t.numel() * t.element_size() for t in exported.module.state_dict().values())
    with atomic_path(path, needed=weights) as tmp:   # about the file's size: the graph is small beside them
        program.save(tmp)
        onnx.checker.check_model(str(tmp))
        try:
            import onnxruntime
        except ImportError:
            line = "check: onnx.checker passed; outputs not compared, onnxruntime is not installed"
        else:
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            line = exported.check(session.run(None, {"images": exported.images.numpy()}), "onnxruntime")
    return [f"load: onnxruntime.InferenceSession(FILE); input 'images' (batch, 3, {exported.metadata['image_size']}, "
            f"{exported.metadata['image_size']}), outputs {', '.join(map(repr, outputs))}", line]
