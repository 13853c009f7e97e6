"""Which config changes a checkpoint survives, checked on `--resume` and `fastssl eval`.

A checkpoint holds the config it was trained with. Resuming it under another model width used to end
in a 119-line state-dict traceback, and under another batch size it resumed silently into a
different run. Fields that only say how long, how often or with how many workers a run goes (and
where its data now live) may change and are reported; every other field changes the model, the
method or the data order, so a difference is an error naming each field with both values.
"""
from __future__ import annotations

from fastssl import config as config_mod
from fastssl import methods
from fastssl.checkpoint import CheckpointError

# May differ between the checkpoint and the run that continues or evaluates it.
SAFE_TO_CHANGE = ("train.epochs", "train.max_steps", "train.log_every", "train.ckpt_every", "train.on_nonfinite",
                  "train.ckpt_every_epochs",
                  "train.max_skipped_steps", "train.auto_resume", "train.device", "train.compile", "train.cudnn_benchmark",
                  "train.deterministic", "loader.workers", "loader.prefetch", "loader.hw_decoder_load",
                  "data.path", "knn.", "log.")
VALUE_WIDTH = 60


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH] + "..."


def differences(saved: dict, cfg: config_mod.Config) -> dict[str, tuple]:
    """{field: (checkpoint's value, current value)} for every field that differs; the method sections
    are compared typed (a section left to its defaults is written out, as the checkpoint's was)."""
    methods.typed_sections(cfg.method)
    # A field the checkpoint's fastssl did not have yet ran at its default (new fields default to the old
    # behaviour), so it is compared as that.
    new = _flat(config_mod.to_dict(cfg))
    defaults = _flat(config_mod.to_dict(config_mod.Config()))
    old = {**{k: v for k, v in defaults.items() if k in new}, **_flat(saved)}
    return {key: (old.get(key, "<absent>"), new.get(key, "<absent>"))
            for key in sorted(set(old) | set(new)) if old.get(key, "<absent>") != new.get(key, "<absent>")}


def check(saved: dict | None, cfg: config_mod.Config, checkpoint: str, scope: str = "") -> list[str]:
    """Raise CheckpointError for changed fields under `scope` ("" = all; "model." for evaluation)
    that are not safe to change; return one line per allowed change, to report."""
    if saved is None:   # checkpoints written before they held their config
        return [f"checkpoint {checkpoint}: holds no config, so it was not compared"]
    changed = {k: v for k, v in differences(saved, cfg).items() if k.startswith(scope)}
    unsafe = {k: v for k, v in changed.items() if not k.startswith(SAFE_TO_CHANGE)}
    if unsafe:
        lines = "; ".join(f"{k}: {_show(a)} in the checkpoint, {_show(b)} now" for k, (a, b) in unsafe.items())
        raise CheckpointError(f"checkpoint {checkpoint}: was trained with another config, and these fields "
                              f"change the model, the method or the data order: {lines}")
    return [f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changed.items()]


def check_method(saved: dict | None, cfg: config_mod.Config, checkpoint: str, config: str) -> None:
    """Readers of a trained run take its weights as the method `config` names (export labels the file with
    it and finds a momentum network by it): a checkpoint of another method, e.g. copied from another
    run's folder, is a CheckpointError naming both. One whose config names no method is not compared."""
    trained = (saved or {}).get("method", {}).get("name")
    if trained and trained != cfg.method.name:
        raise CheckpointError(f"checkpoint {checkpoint!r}: was trained with method {trained!r}, but {config!r} "
                              f"names method {cfg.method.name!r} (a checkpoint copied from another run?)")
