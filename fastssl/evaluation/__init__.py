"""`fastssl eval`: protocols that score a trained encoder's features h (not the projection).

One module per protocol (knn, linear, fewshot, semi, oneshot), each with a `Settings` dataclass and
`evaluate(run, settings, progress) -> (settings used, results, one-line summary)`; features.py holds what
they share. `run_protocol` writes RUN/eval_<protocol>.json with the numbers and the settings
(eval_<protocol>_<data tag>.json when the data is not the run's own: `--set data.*`, or a module's
`result_tag(settings)` for data of its own, such as oneshot's runs).
"""
from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path

from fastssl import config as config_mod
from fastssl.evaluation.features import Progress, load_run, stderr_progress, write_result

PROTOCOLS = config_mod.PROTOCOLS


def settings_for(protocol: str, options: list[str] = ()):
    """The protocol's Settings with KEY=VALUE options applied (YAML scalars or lists); ConfigError
    naming the option otherwise."""
    if protocol not in PROTOCOLS:
        raise config_mod.ConfigError(f"--protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)}")
    cls = importlib.import_module(f"fastssl.evaluation.{protocol}").Settings
    values = {}
    for text in options:
        key, sep, raw = text.partition("=")
        if not sep:
            raise config_mod.ConfigError(f"--opt {text!r}: must be KEY=VALUE with KEY one of the {protocol} "
                                         f"settings {', '.join(f.name for f in dataclasses.fields(cls))}")
        values[key.strip()] = config_mod.load_yaml(raw, f"--opt {config_mod.cut(text)!r}")   # YAML 1.2
    return cls(**config_mod.coerced_fields(cls, values, f"{protocol}."))   # typed as the config's values


def run_protocol(ckpt: str | Path, protocol: str, overrides: list[str] = (), options: list[str] = (),
                 progress: Progress = stderr_progress) -> tuple[Path, dict, str]:
    """Evaluate RUN/last.pt with one protocol: (JSON path, its record's results, summary line)."""
    settings = settings_for(protocol, options)   # option errors before any checkpoint or data is read
    tick = time.perf_counter()
    run = load_run(ckpt, overrides)
    module = importlib.import_module(f"fastssl.evaluation.{protocol}")
    used, results, summary = module.evaluate(run, settings, progress)
    tag = module.result_tag(settings) if hasattr(module, "result_tag") else None
    path = write_result(run, protocol, used, results, time.perf_counter() - tick, tag=tag)
    return path, results, summary
