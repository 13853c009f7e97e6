"""`fastssl export`: a trained run's encoder (or encoder + projector) as a file that other code loads.

One module per format in `formats/` (adding a format is adding a file there); `networks.py` loads the
run's online or momentum network and describes it (the metadata every format writes); `exporter.py`
joins the two. A format checks the file it wrote before putting it in place (reloaded, run on a batch,
compared with the network), so a file that does not reproduce the network is never left behind.
This module imports no torch: a bad flag is answered in milliseconds.
"""
from __future__ import annotations

from fastssl.export import formats
from fastssl.loaders.rules import ConfigError, shown

PARTS = ("encoder", "encoder+projector")
NETWORKS = ("online", "target")


class ExportError(RuntimeError):
    """A written file does not reproduce the network it was exported from; nothing was left behind."""


def check_flags(fmt: str | None, part: str, network: str) -> None:
    """ConfigError naming the flag and its allowed values, for the first flag that has none of them (a
    format of None is the run's own, chosen once the run is read)."""
    for flag, value, allowed in (("format", fmt, formats.names()), ("part", part, PARTS),
                                 ("network", network, NETWORKS)):
        if value is not None and value not in allowed:
            raise ConfigError(f"--{flag} {shown(value)}: must be one of {', '.join(allowed)}")
