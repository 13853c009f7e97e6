"""`export(RUN, format, part, network)`: a run's network written in one format, checked, with report lines."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fastssl.export import check_flags, formats
from fastssl.models import backbones
from fastssl.export.networks import prepare


def default_path(run_dir: Path, fmt: str, part: str, network: str) -> Path:
    """RUN/<network>_<part><suffix>, e.g. RUN/online_encoder.torchvision.pt."""
    return run_dir / f"{network}_{part.replace('+', '_')}{formats.get(fmt).SUFFIX}"


def export(run_dir: str | Path, fmt: str | None = None, part: str = "encoder", network: str = "online",
           ckpt: str = "last.pt", out: str | Path | None = None, module: nn.Module | None = None
           ) -> tuple[Path, list[str]]:
    """Writes RUN/<ckpt>'s network to `out` (default: default_path); returns the path and the lines to
    report (what was written, how to load it, the check's max abs error). `fmt` None: the backbone's own
    library (torchvision or timm), safetensors for a user's module (`module`, a fresh instance of it)."""
    check_flags(fmt, part, network)
    run_dir = Path(run_dir)
    exported = prepare(run_dir, part, network, ckpt, module)
    if fmt is None:
        own = backbones.library(exported.cfg.model, exported.cfg.data.image_size)
        fmt = own.name if own is not None else "safetensors"
    path = Path(out) if out else default_path(run_dir, fmt, part, network)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = formats.get(fmt).write(exported, path)
    meta = exported.metadata
    return path, [f"wrote {path}: {fmt}, {part} of the {network} network of {meta['method']} at step {meta['step']}"
                  f" ({_shape(meta)})", *lines]


def _shape(meta: dict[str, str]) -> str:
    """The exported network in words: fastssl's ResNets by width and stem, other backbones by name and kwargs."""
    if "/" in meta["arch"] or meta["arch"] == "module":
        return meta["arch"] + (f" {meta['kwargs']}" if meta["kwargs"] != "{}" else "")
    return f"{meta['arch']}, width {meta['width']}, {meta['stem']} stem"
