"""solo-learn: probed, not run. The package index's only release, 1.0.2 (November 2021), requires
torch==1.9.1, torchvision==0.10.1 and pytorch-lightning==1.4.7: pip reports ResolutionImpossible on
Python 3.10+ (no torch 1.9 wheel). Installed with --no-deps beside lightning-bolts, `import solo.methods`
fails on pytorch-lightning 2.x (`pytorch_lightning.utilities.apply_func` was removed in 2.0), and its
methods define `validation_epoch_end`, a hook Lightning 2.x refuses. `unavailable()` repeats the probe
on the machine at hand so the report states what happened there, not what was true once.
"""
from __future__ import annotations

from fastssl.bench.peers import installed_version

NAME = "solo-learn"
METHODS = ("simclr", "byol")
PYPI_REASON = ("the package index has only solo-learn 1.0.2 (2021), which requires torch==1.9.1 and "
               "pytorch-lightning==1.4.7: pip finds no solution with this torch")


def version() -> str:
    return installed_version("solo-learn")


def unavailable() -> str | None:
    """Why solo-learn cannot train here, or None if it imports (then the bench still has no runner for it)."""
    if version() == "not installed":
        return f"not installed: {PYPI_REASON}"
    try:
        import solo.methods  # noqa: F401
    except Exception as e:   # any import-time failure is the reason to report
        return f"solo-learn {version()} does not import here: {type(e).__name__}: {e}"
    return "solo-learn imports, but its 1.x trainer needs pytorch-lightning 1.4 hooks; no runner written"
