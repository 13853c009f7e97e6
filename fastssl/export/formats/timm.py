"""timm: the encoder's state dict under timm's own names, loadable with strict=True into
`timm.create_model(<name>, num_classes=0, **model.kwargs)`, with the metadata; `torch.save({"state_dict",
"metadata"})`, read with weights_only=True. For runs of a `timm/<name>` backbone."""
from __future__ import annotations

from fastssl.export.library import own_library, write_state_dict
from fastssl.export.networks import Exported

SUFFIX = ".timm.pt"


def write(exported: Exported, path) -> list[str]:
    return write_state_dict(exported, path, own_library(exported, "timm"))
