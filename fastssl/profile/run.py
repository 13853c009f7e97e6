"""`fastssl profile`: the real training step, per backend, split into its stages.

Each backend gets a Trainer built from the run's config with only the backend changed: the same code
as `fastssl train` (Trainer.profile_steps drives the step `fit` drives). W untimed steps warm up
(kernels compiled, workers started, allocator grown), then N timed steps; their wall time is also
measured apart from the stage marks, and the stages must add up to it within ADD_UP_TOLERANCE.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import time
from pathlib import Path
from typing import Callable

from fastssl import config as config_mod
from fastssl.loaders.rules import ConfigError, shown
from fastssl.loaders.stages import AUGMENT, H2D_COPY, LOADER_WAIT, REST

from .report import ADD_UP_TOLERANCE, BackendProfile, stage_stats

PACKAGES = {"ffcv": "ffcv", "dali": "nvidia.dali"}       # optional backends, by the module they need
MAX_STEPS = 100_000


def stage_order() -> list[str]:
    """Every stage a step can hold, in the order a step runs them."""
    from fastssl.engine.trainer import STEP_STAGES

    return [LOADER_WAIT, H2D_COPY, AUGMENT, *STEP_STAGES, REST]


def check_arguments(backends: list[str], steps: int, warmup: int) -> None:
    """Bad arguments fail here, before any data is read or model built."""
    if not backends:
        raise ConfigError("--backends: must name at least one backend")
    for backend in backends:
        if backend not in config_mod.BACKENDS:
            raise ConfigError(f"--backends: {shown(backend)} is not a backend (one of {', '.join(config_mod.BACKENDS)})")
        module = PACKAGES.get(backend)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"--backends: {backend} needs the {module} package, which is not installed "
                              f"(pip install fastssl[{backend}])")
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps={steps}: must be in [1, {MAX_STEPS}] (timed steps per backend)")
    if not 0 <= warmup <= MAX_STEPS:
        raise ConfigError(f"--warmup={warmup}: must be in [0, {MAX_STEPS}]")


def backend_config(cfg: config_mod.Config, backend: str, total_steps: int) -> config_mod.Config:
    """The run's config on `backend`, long enough for the profile, without evaluations or checkpoints."""
    out = copy.deepcopy(cfg)
    out.loader.backend = backend
    out.train.max_steps, out.train.ckpt_every = total_steps, 0
    out.train.log_every = total_steps
    out.knn.every_epochs = 0
    config_mod.validate(out)
    return out


def profile_backend(cfg: config_mod.Config, backend: str, steps: int, warmup: int, sync: bool,
                    run_dir: Path, trace: Path | None) -> BackendProfile:
    from fastssl.engine.trainer import TRACE_STEPS, Trainer
    from fastssl.loaders.augment import view_sizes
    from fastssl.loaders.batch import views_label

    bcfg = backend_config(cfg, backend, warmup + steps + (TRACE_STEPS if trace else 0))
    trainer = Trainer(bcfg, run_dir)
    try:
        timings, wall_s, peaks = trainer.profile_steps(warmup, steps, sync=sync, trace=trace)
    finally:
        trainer.close()   # the run folder's lock: profile_steps is not fit, which releases it itself
    step, stages = stage_stats(timings, stage_order(), peaks)
    wall_ms = 1000.0 * wall_s / steps
    marked_ms = sum(t["step"] for t in timings) / steps
    if abs(marked_ms - wall_ms) > ADD_UP_TOLERANCE * wall_ms:
        raise RuntimeError(f"profile {backend}: the stages add up to {marked_ms:.2f} ms per step but the steps took "
                           f"{wall_ms:.2f} ms (tolerance {ADD_UP_TOLERANCE:.0%}): a stage is not marked")
    views = views_label(view_sizes(bcfg.augment, bcfg.loader.views, bcfg.data.image_size))
    return BackendProfile(backend, steps, bcfg.loader.batch_size, views, step, wall_ms, marked_ms,
                          bcfg.loader.batch_size * steps / wall_s, stages, bcfg.loader.workers,
                          max(peaks.values()) if peaks else None)


def profile(cfg: config_mod.Config, backends: list[str], steps: int, warmup: int, sync: bool, out: Path,
            trace: bool, say: Callable[[str], None]) -> list[BackendProfile]:
    check_arguments(backends, steps, warmup)
    results = []
    for backend in backends:
        say(f"profiling {backend}: {warmup} warm-up + {steps} timed steps")
        start = time.perf_counter()
        results.append(profile_backend(cfg, backend, steps, warmup, sync, out / "runs" / backend,
                                       out / f"trace_{backend}.json" if trace else None))
        say(f"  {backend}: {results[-1].images_per_s:,.0f} images/s ({time.perf_counter() - start:.0f} s)")
    return results


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
