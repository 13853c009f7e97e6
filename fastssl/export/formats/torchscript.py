"""TorchScript: the network traced (torch.jit.trace) in eval mode; the metadata as the file's extra
file metadata.json. PyTorch deprecates TorchScript in favour of torch.export; its deprecation warnings are
silenced here and said once in the report instead, as the user asked for this format."""
from __future__ import annotations

import io
import json
import warnings

import torch

from fastssl.export.networks import Exported
from fastssl.loaders.atomic import staged_bytes

SUFFIX = ".torchscript.pt"


def write(exported: Exported, path) -> list[str]:
    metadata = {**exported.metadata, "format": "torchscript"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        # Traced on 2 images, checked on 3 below (so the batch size is not baked in): the tracer's own
        # check would only run the same batch again.
        traced = torch.jit.trace(exported.module, exported.images[:2], check_trace=False)
        data = io.BytesIO()   # in memory: torch.jit.save to a path on a full disk aborts the process
        torch.jit.save(traced, data, _extra_files={"metadata.json": json.dumps(metadata)})
        with staged_bytes(path, data.getvalue()) as tmp:
            loaded = torch.jit.load(tmp)
            with torch.no_grad():
                line = exported.check(loaded(exported.images), "torch.jit.load")
    return ["load: torch.jit.load(FILE); metadata: torch.jit.load(FILE, _extra_files={'metadata.json': ''})",
            line, "note: PyTorch deprecates TorchScript; torch.export is its successor"]
