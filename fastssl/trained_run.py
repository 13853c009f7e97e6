"""A trained run as every reader of one needs it (fastssl eval, features, export): its checkpoint,
loaded with weights_only=True (a torn or foreign file is a CheckpointError naming it), RUN/config.yaml
with overrides, the checks that the overrides still fit the weights and that the checkpoint is the
method's the config names, and the online network."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fastssl import compat, methods
from fastssl import config as config_mod
from fastssl.checkpoint import load_checkpoint, load_state
from fastssl.models import SSLNet, build_model


@dataclass
class Trained:
    """A run's checkpoint, config and online network (weights loaded, on the CPU)."""
    cfg: config_mod.Config
    ckpt: Path
    state: dict
    model: SSLNet


def load_weights(model: nn.Module, weights: dict, ckpt: Path, what: str = "weights") -> None:
    load_state(model, weights, ckpt, f"its {what} do not fit the model of {str(ckpt.parent / 'config.yaml')!r} "
                                     "(model.* overridden?)")


def load_trained(ckpt: str | Path, overrides: list[str] = (), module: nn.Module | None = None) -> Trained:
    """The run of checkpoint `ckpt` (RUN/last.pt): config from RUN/config.yaml with `overrides` applied;
    `module`: a fresh instance of the user's network, for a run of model.arch=module."""
    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt, ("model", "run"))
    saved = ckpt.parent / "config.yaml"
    if not saved.is_file():
        raise config_mod.ConfigError(f"checkpoint {str(ckpt)!r}: its folder holds no config.yaml, so it is not "
                                     "a fastssl run directory")
    cfg = config_mod.load_config(saved, list(overrides))
    compat.check(state.get("config"), cfg, str(ckpt), scope="model.")   # the weights must fit the model
    methods.typed_sections(cfg.method)   # a config naming no method gets the default one's name
    compat.check_method(state.get("config"), cfg, str(ckpt), str(saved))
    model = build_model(cfg.model, image_size=cfg.data.image_size, module=module, init=False)
    load_weights(model, state["model"], ckpt)
    return Trained(cfg, ckpt, state, model)
