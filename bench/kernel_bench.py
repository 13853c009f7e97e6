"""The loop every kernel microbenchmark shares, so a bench module holds only its problem and providers.

A bench module makes one `Case` per (shape, dtype): input buffers and the float64 answer on the first
of them; and per provider forward(buffer) -> output and backward(output, buffer) -> gradients. This
module checks each provider against the answer, counts what it saves for backward, and times every
mode on the buffers of the case (bench/kernel_timing.py), recording an out-of-memory as an OOM row.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from fastssl.config import ConfigError

from . import kernel_report
from .harness import Row, summarize
from .kernel_timing import Prepare, peak_extra_bytes, saved_bytes, time_calls, unless_oom

Forward = Callable[[Any], Any]                        # a buffer -> the output
Backward = Callable[[Any, Any], Sequence[torch.Tensor]]  # (output, buffer) -> gradients


def parse_shapes(spec: str, presets: dict[str, list[tuple[int, ...]]], form: str, valid: Callable[..., bool],
                 rule: str) -> list[tuple[int, ...]]:
    """A preset's shapes, or a comma-separated list of `form` shapes (such as TxnxD), each passing `valid`."""
    if spec in presets:
        return presets[spec]
    try:
        shapes = [tuple(int(v) for v in item.split("x")) for item in spec.lower().split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != form.count("x") + 1 or not valid(*s) for s in shapes):
        raise ConfigError(f"--sizes {spec!r}: must be {', '.join(presets)}, or comma-separated {form} {rule}")
    return shapes


@dataclass
class Case:
    """One (shape, dtype): its buffers, cycled through by every provider and mode, and the float64
    (output, gradients) on buffers[0]; an output may be a tuple of tensors (each compared), and a buffer
    a tuple of inputs. fixed: what all buffers share (labels, ...); flops: per mode,
    the algorithmic FLOPs that TFLOP/s rows are computed from (none: no TFLOP/s rows); traffic: per
    mode, the bytes a call must read and write at the least, for GB/s rows (memory-bound kernels)."""
    benchmark: str
    shape: str
    dtype: str
    buffers: list[Any]
    reference: tuple[torch.Tensor | tuple[torch.Tensor, ...], Sequence[torch.Tensor]]
    where: dict[str, str]
    fixed: Any = None
    flops: dict[str, float] | None = None
    traffic: dict[str, float] | None = None
    cycle: Iterator[torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.cycle = itertools.cycle(self.buffers)

    def row(self, provider: str, mode: str, metric: str, value, unit: str) -> Row:
        """value: a list of samples, one number, or None for an out-of-memory."""
        if value is None:
            stats, unit = (math.nan,) * 3, "OOM"
        else:
            stats = summarize(value) if isinstance(value, list) else (float(value),) * 3
        return Row(self.benchmark, provider, self.shape, self.dtype, mode, metric, *stats, unit, **self.where)


def prepare(mode: str, forward: Forward, backward: Backward) -> Prepare:
    """buffer -> the thunk to time for `mode`. backward alone runs after an untimed forward on its own
    buffer: timing repeated backwards of one retained graph would reread inputs that the previous
    repetition left in cache, which no training step does."""
    if mode == "forward":
        return lambda b: lambda: forward(b)
    if mode == "forward+backward":
        return lambda b: lambda: backward(forward(b), b)

    def after_forward(b):
        out = forward(b)
        return lambda: backward(out, b)
    return after_forward


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    expected = expected.to(actual.device, torch.float64)
    return ((actual.detach().double() - expected).norm() / expected.norm()).item()


def _errors(forward: Forward, backward: Backward, case: Case) -> list[float]:
    """Relative errors of the output (of each of a tuple's), then of each gradient, against the float64
    answer on buffers[0]."""
    out = forward(case.buffers[0])
    grads = backward(out, case.buffers[0])
    ref_out, ref_grads = case.reference
    outs, ref_outs = (out, ref_out) if isinstance(ref_out, tuple) else ((out,), (ref_out,))
    return [*(rel_error(o, r) for o, r in zip(outs, ref_outs, strict=True)),
            *(rel_error(g, r) for g, r in zip(grads, ref_grads, strict=True))]


def measure_provider(case: Case, provider: str, forward: Forward, backward: Backward,
                     errors: Sequence[tuple[str, str]], modes: Sequence[str], *, reps: int, warmup: int,
                     device: torch.device) -> list[Row]:
    """One provider on one case: errors (its first call, where compilation and autotuning happen),
    saved bytes, then per mode the time and, on CUDA, TFLOP/s or GB/s and peak extra memory. Any may be an
    OOM row.

    errors: the (mode, metric) each error is reported under: the output's, then each gradient's.
    """
    values = unless_oom(lambda: _errors(forward, backward, case)) or [None] * len(errors)
    rows = [case.row(provider, mode, metric, value, "rel") for (mode, metric), value in zip(errors, values)]
    rows.append(case.row(provider, "forward", "saved for backward",
                         unless_oom(lambda: saved_bytes(forward, next(case.cycle))), "B"))
    for mode in modes:
        thunk = prepare(mode, forward, backward)
        seconds = unless_oom(lambda: time_calls(thunk, case.cycle, reps=reps, warmup=warmup, device=device))
        rows.append(case.row(provider, mode, "time", seconds and [s * 1e3 for s in seconds], "ms"))
        if device.type != "cuda":
            continue
        if case.flops:
            rows.append(case.row(provider, mode, "TFLOP/s", seconds and [case.flops[mode] / s / 1e12 for s in seconds],
                                 "TFLOP/s"))
        if case.traffic:
            rows.append(case.row(provider, mode, "GB/s", seconds and [case.traffic[mode] / s / 1e9 for s in seconds],
                                 "GB/s"))
        rows.append(case.row(provider, mode, "peak extra memory",
                             unless_oom(lambda: peak_extra_bytes(thunk, next(case.cycle), device)), "B"))
    return rows


def measure(cases: Iterable[Case], providers: Sequence[str], make: Callable[[Case, str], tuple[Forward, Backward]],
            errors: Sequence[tuple[str, str]], modes: Sequence[str], *, reps: int, warmup: int,
            device: torch.device, progress: Callable[[str], Any]) -> list[Row]:
    """Every provider on every case, all on the same inputs; a progress line per provider.

    make(case, provider) -> (forward, backward), called once per case; `cases` may be a generator
    that makes each case's buffers only when its turn comes.
    """
    rows: list[Row] = []
    for case in cases:
        for provider in providers:
            forward, backward = make(case, provider)
            new = measure_provider(case, provider, forward, backward, errors, modes, reps=reps, warmup=warmup,
                                   device=device)
            rows += new
            times = [f"{r.mode} {kernel_report.cell(r)}" for r in new if r.metric == "time"]
            progress(f"{case.shape} {case.dtype} {provider} (ms, median [p20, p80]): " + ", ".join(times))
        del case  # free this case's buffers before the next case's are made
    return rows
