"""The project's GPU targets, read off the CSV rows a `gpu_run` wrote: one summary table.

Standard library only: `bench/gpu_run.py` imports it before the project (and torch) may be
importable. Each target names the measurement, the rule, the result and the row behind it. Results
come from the first shape a step measured (the real run measures the headline shapes; a rehearsal
measures tiny ones, and its verdicts say so rather than judge).
"""
from __future__ import annotations

import csv
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable


@dataclass
class Outcome:
    step: str
    status: str          # ok | failed | timed out | skipped
    detail: str


@dataclass
class Header:
    commit: str
    rehearse: bool
    deadline: float
    started: str
    elapsed: float | None = None


@dataclass
class Target:
    measurement: str
    rule: str
    result: str
    met: bool | None     # None: nothing to judge (not measured, or no target)
    source: str


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        with open(path, newline="") as f:
            rows += [{**row, "file": path.name} for row in csv.DictReader(f)]
    return rows


def _pick(rows: list[dict], **want) -> dict | None:
    for row in rows:
        if all(row.get(k) == v for k, v in want.items()):
            return row
    return None


def _median(row: dict | None) -> float | None:
    if row is None or row.get("unit") == "OOM":
        return None
    value = float(row["median"])
    return value if math.isfinite(value) else None


def _cite(row: dict | None) -> str:
    if row is None:
        return "—"
    return f"{row['file']}: {row['provider']} / {row['shape']} / {row['dtype']} / {row['mode']} / {row['metric']}"


def _missing(measurement: str, rule: str, why: str) -> Target:
    return Target(measurement, rule, why, None, "—")


def tests(folder: Path) -> list[Target]:
    rule = "every `gpu` test passes"
    report = folder / "gpu-tests.xml"
    if not report.is_file():
        return [_missing("pytest -m gpu", rule, "no junit report")]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    result = f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"
    met = None if passed == 0 and not (n["failures"] or n["errors"]) else not (n["failures"] or n["errors"])
    return [Target("pytest -m gpu", rule, result, met, "gpu-tests.xml")]


def _speedup(rows: list[dict], measurement: str, subject: str, baseline: str, least: float,
             **where) -> Target:
    mine = _pick(rows, provider=subject, metric="time", **where)
    same_shape = {**where, "shape": mine["shape"]} if mine else where
    theirs = _pick(rows, provider=baseline, metric="time", **same_shape)
    rule = f"{subject} >= {least:.3g}x {baseline}"
    if _median(mine) is None or _median(theirs) is None:
        return _missing(measurement, rule, "not measured" if mine is None or theirs is None else "OOM")
    ratio = _median(theirs) / _median(mine)
    return Target(f"{measurement} ({mine['shape']} {mine['dtype']})", rule, f"{ratio:.2f}x "
                  f"({_median(mine):.3g} vs {_median(theirs):.3g} ms)", ratio >= least, _cite(mine))


def sim_xent(folder: Path) -> list[Target]:
    rows = read_rows(folder)
    fb = {"mode": "forward+backward"}
    return [_speedup(rows, "sim_xent fwd+bwd vs eager", "triton", "eager", 3.0, **fb),
            _speedup(rows, "sim_xent fwd+bwd vs torch.compile", "triton", "compile", 1.5, **fb)]


def sim_xent_memory(folder: Path) -> list[Target]:
    """Extra memory O(M D): dq, dk and their sum, three fp32 row vectors and the allocator's slack."""
    rows = read_rows(folder)
    peak = _pick(rows, provider="triton", mode="forward+backward", metric="peak extra memory")
    eager = _pick(rows, provider="eager", mode="forward+backward", metric="peak extra memory")
    measurement = "sim_xent extra memory at large 2N"
    if peak is None:
        timed = _pick(rows, provider="triton", metric="time")
        return [_missing(measurement, "<= 4 M D bytes/elt + 12 M + 8 MiB",
                         "peak memory is measured on CUDA only" + (f" (ran at {timed['shape']})" if timed else ""))]
    m, d = (int(v) for v in re.search(r"2N=(\d+) D=(\d+)", peak["shape"]).groups())
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4}[peak["dtype"]]
    bound = 4 * m * d * itemsize + 12 * m + (8 << 20)
    used = _median(peak)
    eager_text = "OOM" if eager is not None and eager["unit"] == "OOM" else (
        f"{_median(eager) / 2**20:,.0f} MiB" if _median(eager) is not None else "not run")
    return [Target(f"{measurement} ({peak['shape']} {peak['dtype']})", f"<= {bound / 2**20:,.0f} MiB",
                   f"{used / 2**20:,.0f} MiB (eager: {eager_text})", used <= bound, _cite(peak))]


def proto_xent(folder: Path) -> list[Target]:
    """Speedups forward+backward at the measured shape, and extra memory O(V B + K) beyond the gradients:
    those of student and w_student, the fp32 (Vt, B, D) teacher share, fp32 per-row and per-prototype
    vectors, and the allocator's slack."""
    rows = read_rows(folder)
    fb = {"mode": "forward+backward"}
    targets = [_speedup(rows, "proto_xent fwd+bwd vs eager", "triton", "eager", 2.0, **fb),
               _speedup(rows, "proto_xent fwd+bwd vs torch.compile", "triton", "compile", 1.3, **fb)]
    measurement, rule = "proto_xent extra memory", "<= gradients + 4 Vt B D + 16 (Vs + Vt) B + 8 K + 8 MiB"
    peak = _pick(rows, provider="triton", metric="peak extra memory", **fb)
    if peak is None:
        return targets + [_missing(measurement, rule, "peak memory is measured on CUDA only")]
    vs, vt, b, k, d = (int(v) for v in re.findall(r"=(\d+)", peak["shape"]))
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4}[peak["dtype"]]
    bound = itemsize * (vs * b * d + k * d) + 4 * vt * b * d + 16 * (vs + vt) * b + 8 * k + (8 << 20)
    eager = _median(_pick(rows, provider="eager", metric="peak extra memory", shape=peak["shape"],
                          dtype=peak["dtype"], **fb))
    used = _median(peak)
    return targets + [Target(f"{measurement} ({peak['shape']} {peak['dtype']})", f"<= {bound / 2**20:,.0f} MiB",
                             f"{used / 2**20:,.0f} MiB (eager: "
                             + (f"{eager / 2**20:,.0f} MiB)" if eager is not None else "OOM or not run)"),
                             used <= bound, _cite(peak))]


def _ridge_shape(row: dict) -> tuple[int, int, int]:
    t, n, d = (int(v) for v in re.findall(r"[TnD]=(\d+)", row["shape"]))
    return t, n, d


RIDGE_TARGETS = [  # (what, which shapes, baselines, least speedup over the fastest): fp32, fwd+bwd
    ("few-shot episodes", lambda t, n, d: t > 1, ("solve", "cholesky"), 5.0),
    ("SSL batch vs the dual solve", lambda t, n, d: t == 1 and n == 512, ("solve",), 2.0),
    ("large system vs cuSOLVER", lambda t, n, d: t == 1 and min(n, d) > 64 and n >= 4096, ("cholesky",), 1 / 1.2),
]


def ridge(folder: Path) -> list[Target]:
    """The first measured shape of each kind against its fastest baseline (the smallest speedup)."""
    rows = [r for r in read_rows(folder) if r["dtype"] == "fp32" and r["mode"] == "forward+backward"]
    targets = []
    for what, kind, baselines, least in RIDGE_TARGETS:
        shapes = [r["shape"] for r in rows if r["provider"] == "triton" and r["metric"] == "time"
                  and kind(*_ridge_shape(r))]
        if not shapes:
            targets.append(_missing(f"ridge {what}", f"triton >= {least:.3g}x {' and '.join(baselines)}",
                                    "not measured"))
            continue
        candidates = [_speedup(rows, f"ridge {what}", "triton", b, least, shape=shapes[0]) for b in baselines]
        judged = [t for t in candidates if t.met is not None]
        chosen = min(judged, key=lambda t: float(t.result.split("x")[0])) if judged else candidates[0]
        targets.append(replace(chosen, rule=f"triton >= {least:.3g}x {' and '.join(baselines)}"))
    return targets


def augment(folder: Path) -> list[Target]:
    """The kernel's GB/s against the peak the env step read from the memory clock and bus width."""
    rows = read_rows(folder)
    env = folder.parent / "env" / "env.json"
    peak = json.loads(env.read_text()).get("peak_dram_gb_s") if env.is_file() else None
    rates = [r for r in rows if r["provider"] == "triton" and r["metric"] == "GB/s"]
    rule = ">= 70% of peak DRAM bandwidth"
    if not peak or not rates:
        return [_missing("augment kernel bandwidth", rule, "GB/s and the peak are measured on CUDA only")]
    targets = []
    for rate in rates:
        share = _median(rate) / peak
        targets.append(Target(f"augment kernel ({rate['shape']} {rate['dtype']})", rule,
                              f"{share:.0%} ({_median(rate):,.0f} of {peak:,.0f} GB/s)", share >= 0.70,
                              _cite(rate)))
    return targets


def loader(folder: Path) -> list[Target]:
    rows = read_rows(folder)
    row = _pick(rows, provider="tensor", metric="images/s")
    rule = ">= 100,000 images/s at 32 px"
    if _median(row) is None:
        return [_missing("tensor loader", rule, "not measured")]
    base = _median(_pick(rows, provider="torchvision", metric="images/s"))
    extra = f"; {_median(row) / base:.1f}x torchvision" if base else ""
    return [Target(f"tensor loader ({row['shape']})", rule, f"{_median(row):,.0f} images/s{extra}",
                   _median(row) >= 100_000, _cite(row))]


def train(name: str) -> Callable[[Path], list[Target]]:
    def targets(folder: Path) -> list[Target]:
        # the tensor backend's row (`tensor`, or `tensor ARCH` where the step names its model with --model)
        row = next((r for r in read_rows(folder) if r["provider"].split(" ")[0] == "tensor"
                    and r["metric"] == "images/s"), None)
        if _median(row) is None:
            return [_missing(f"training step, {name}", "recorded (no target yet)", "not measured")]
        return [Target(f"training step, {name} ({row['shape']}, {row['dtype']})", "recorded (no target yet)",
                       f"{_median(row):,.0f} images/s [{float(row['p20']):,.0f}, {float(row['p80']):,.0f}]", None,
                       _cite(row))]
    return targets


def peers(name: str, least: float = 2.0) -> Callable[[Path], list[Target]]:
    """fastssl's fastest backend over the fastest peer, per method (`fastssl bench peers` CSV rows)."""
    def targets(folder: Path) -> list[Target]:
        rows = [r for r in read_rows(folder) if r.get("status") == "ok" and r.get("ips_median")]
        rule = f"fastssl >= {least:g}x the fastest peer"
        out = []
        for method in sorted({r["method"] for r in rows}):
            mine = [r for r in rows if r["method"] == method and r["trainer"].startswith("fastssl")]
            theirs = [r for r in rows if r["method"] == method and not r["trainer"].startswith("fastssl")]
            if not mine or not theirs:
                out.append(_missing(f"{method}, {name}", rule, "fastssl or every peer not measured"))
                continue
            best = max(mine, key=lambda r: float(r["ips_median"]))
            peer = max(theirs, key=lambda r: float(r["ips_median"]))
            ratio = float(best["ips_median"]) / float(peer["ips_median"])
            out.append(Target(f"{method}, {name}", rule, f"{ratio:.2f}x ({best['trainer']} "
                              f"{float(best['ips_median']):,.0f} vs {peer['trainer']} {float(peer['ips_median']):,.0f} "
                              "images/s)", ratio >= least, f"{best['file']}: {best['trainer']} / {peer['trainer']}"))
        return out or [_missing(name, rule, "not measured")]
    return targets


def environment(folder: Path) -> list[Target]:
    path = folder / "env.json"
    if not path.is_file():
        return [_missing("environment", "recorded", "no env.json")]
    info = json.loads(path.read_text())
    text = (f"{info.get('gpu')}; torch {info.get('torch')}, triton {info.get('triton')}, CUDA {info.get('cuda')}; "
            f"nvidia-smi: {info.get('nvidia_smi')}")
    return [Target("environment", "recorded", text, None, "env/env.json")]


READERS = {"env": environment, "tests": tests, "sim_xent": sim_xent, "sim_xent_memory": sim_xent_memory,
           "proto_xent": proto_xent, "ridge": ridge, "augment": augment, "loader": loader,
           "train_resnet18": train("ResNet-18, 32 px"), "train_resnet50": train("ResNet-50, 224 px"),
           "train_vit_small": train("ViT-S/16, 224 px"),
           "peers_resnet18": peers("ResNet-18, 32 px"), "peers_resnet50": peers("ResNet-50, 224 px")}


def _verdict(met: bool | None, rehearse: bool) -> str:
    if met is None:
        return "—"
    word = "met" if met else "NOT met"
    return f"({word}: rehearsal sizes, no verdict)" if rehearse else word


def summary(header: Header, outcomes: list[Outcome], scratch: Path) -> str:
    lines = [f"# GPU run{' (REHEARSAL: tiny sizes; times and verdicts mean nothing)' if header.rehearse else ''}",
             "", f"commit {header.commit}; started {header.started}; deadline {header.deadline:.0f} s"
             + (f"; took {header.elapsed:.0f} s" if header.elapsed is not None else "; still running or cut short"),
             "", "| step | status | detail |", "|---|---|---|"]
    lines += [f"| {o.step} | {o.status} | {o.detail} |" for o in outcomes]
    lines += ["", "| measurement | target | result | met | row behind it |", "|---|---|---|---|---|"]
    for o in outcomes:
        if o.step in READERS:
            for t in READERS[o.step](scratch / o.step):
                lines.append(f"| {t.measurement} | {t.rule} | {t.result} | {_verdict(t.met, header.rehearse)} | "
                             f"{t.source} |")
    return "\n".join(lines) + "\n"
