"""When a start continues a run folder's checkpoint, and what it must find the same: the rules a resume
follows beyond the config's fields (those are fastssl/compat.py's).

A cluster starts a run again without anyone typing `--resume`: torchrun restarts every worker after
one fails (TORCHELASTIC_RESTART_COUNT > 0), a requeued job runs its command again (train.auto_resume).
Both continue the folder's checkpoint where it holds one, through the same checks as `--resume`. And
whatever started it, a resume must read the training data it was trained on: the checkpoint holds their
fingerprint (loaders/datasets/fingerprint.py), compared here, as are the ranks' own (a node whose copy
of the data differs would train on other images silently).
"""
from __future__ import annotations

import os
from pathlib import Path

from fastssl.checkpoint import CheckpointError
from fastssl.loaders.datasets.base import DataError
from fastssl.loaders.datasets.fingerprint import Fingerprint, changes

RESTARTS = "TORCHELASTIC_RESTART_COUNT"   # set by torchrun's agent in every worker it starts


def by_itself(checkpoint: Path, auto_resume: bool) -> str | None:
    """Why this start continues `checkpoint` without --resume (a torchrun restart, train.auto_resume),
    or None: neither applies, or there is no checkpoint yet (the run then starts afresh)."""
    restarts = int(os.environ.get(RESTARTS) or 0)
    if not checkpoint.exists() or not (restarts or auto_resume):
        return None
    return f"torchrun restart {restarts}" if restarts else "train.auto_resume=true"


def check_data(found: list[Fingerprint | None], saved: Fingerprint | None, checkpoint: str | None, accept: bool,
               data_path: str | None) -> list[str]:
    """Raise where the ranks' fingerprints (`found`, in rank order) differ, or where a resume's data differ
    from the checkpoint's (`saved`; `checkpoint` None: not a resume) and `accept` is False; return the
    lines to report (an accepted change, or data that could not be compared)."""
    other = next((rank for rank, value in enumerate(found) if value != found[0]), None)
    if other is not None:
        raise DataError(f"the training data differ between ranks: rank {other} of {len(found)} read other data "
                        f"than rank 0 ({'; '.join(changes(found[0], found[other]))}); every node must see the same "
                        f"files (data.path={data_path!r})")
    current = found[0]
    if checkpoint is None:
        return []
    if saved is None or current is None:
        why = ("the checkpoint holds no fingerprint of them, written before fastssl kept one" if saved is None
               else "this dataset gives no fingerprint")
        return [f"{checkpoint}: the training data were not compared ({why})"]
    changed = changes(saved, current)
    if changed and not accept:
        raise CheckpointError(f"{checkpoint}: the training data changed since it was written ({'; '.join(changed)}); "
                              "a resumed run must read the data it was trained on (its data order follows from "
                              "them): resume on these data anyway with --accept-data-change (the change is logged)")
    return [f"training data, accepted by --accept-data-change: {'; '.join(changed)}"] if changed else []
