"""safetensors: the network's tensors under fastssl's own names (they load into `fastssl.models.build_encoder`
or `build_model` of the run's model config) and the metadata, strings only, in the file's header."""
from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from fastssl.export.networks import Exported
from fastssl.loaders.atomic import atomic_path

SUFFIX = ".safetensors"


def write(exported: Exported, path) -> list[str]:
    state = exported.module.state_dict()
    with atomic_path(path, sum(t.numel() * t.element_size() for t in state.values())) as tmp:
        save_file(state, tmp, metadata={**exported.metadata, "format": "safetensors"})
        loaded = exported.untrained()
        loaded.load_state_dict(load_file(tmp))   # strict
        with torch.no_grad():
            outputs = loaded.eval()(exported.images)
        line = exported.check(outputs, "safetensors' load_file into a new fastssl network")
    return ["load: safetensors.torch.load_file(FILE) into fastssl.models."
            + ("build_encoder(cfg.model)" if exported.part == "encoder" else "build_model(cfg.model)")
            + ", cfg from the header's `config`", line]
