"""The numbers of a profile and what they say: per-stage statistics, the verdict, the advice.

Every sentence of advice quotes a number measured in the same profile; a rule whose evidence was not
measured says nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

INPUT_BOUND_SHARE = 0.30       # the loader wait above this share of the step: input-bound
ADD_UP_TOLERANCE = 0.05        # the stages' summed time against the independently timed step
TOP = 3
FASTER = 1.05                  # another backend's images/s above this ratio is worth naming
CONTENDED = 1.3                # forward + backward this much slower than with another backend: contention


@dataclass
class StageStats:
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    share: float                # of the total time of the timed steps
    peak_mib: float | None = None


@dataclass
class BackendProfile:
    backend: str
    steps: int
    batch_size: int
    views: str                   # the views' sizes per run of equal size, e.g. "2x32px+6x16px" (multi-crop)
    step_ms: StageStats          # the step as the stage marks see it
    wall_ms_per_step: float      # the timed steps' wall time / steps, measured apart from the marks
    marked_ms_per_step: float    # the stages' summed time / steps: must match the wall time
    images_per_s: float          # images, not views: a multi-crop image counts once
    stages: list[StageStats]
    workers: int
    peak_mib: float | None = None
    verdict: str = ""
    advice: list[str] = field(default_factory=list)

    def share_of(self, name: str) -> float:
        return next((s.share for s in self.stages if s.name == name), 0.0)

    def compute_ms(self) -> float:
        """Mean ms per step in the model's forward and backward passes."""
        return (self.share_of("forward") + self.share_of("backward")) * self.wall_ms_per_step


def stage_stats(steps: list[dict[str, float]], order: list[str], peaks: dict[str, float] | None = None
                ) -> tuple[StageStats, list[StageStats]]:
    """Per-step {stage: ms} -> the step's statistics and each stage's, in `order` (stages never
    marked are left out); shares are of the summed step time, so they add up to 1."""
    if not steps:
        raise ValueError("profile: no timed steps")
    total = sum(step["step"] for step in steps)

    def stats(name: str) -> StageStats:
        values = np.array([step.get(name, 0.0) for step in steps])
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        return StageStats(name, float(median), float(p10), float(p90), float(values.sum() / total),
                          (peaks or {}).get(name))

    present = [name for name in order if any(name in step for step in steps)]
    return stats("step"), [stats(name) for name in present]


LOADER_WAIT = "loader wait"


def judge(profiles: list[BackendProfile], cores: int, device_mib: float | None = None) -> None:
    """Fill each profile's verdict and advice from the numbers of this profile (all backends of the run)."""
    fastest = max(profiles, key=lambda p: p.images_per_s)
    for p in profiles:
        wait = p.share_of(LOADER_WAIT)
        ranked = sorted(p.stages, key=lambda s: s.share, reverse=True)[:TOP]
        top = ", ".join(f"{s.name} {s.share:.0%}" for s in ranked)
        bound = "input-bound" if wait > INPUT_BOUND_SHARE else "compute-bound"
        p.verdict = (f"{bound}: the loader wait is {wait:.0%} of the step (input-bound above "
                     f"{INPUT_BOUND_SHARE:.0%}); top stages: {top}")
        p.advice = []
        if fastest is not p and fastest.images_per_s > FASTER * p.images_per_s:
            p.advice.append(f"the `{fastest.backend}` backend delivered {fastest.images_per_s / p.images_per_s:.1f}x "
                            f"the images/s of `{p.backend}` on this machine in this run")
        compute, least = p.compute_ms(), min(q.compute_ms() for q in profiles)
        if least > 0 and compute > CONTENDED * least:
            other = min(profiles, key=lambda q: q.compute_ms())
            p.advice.append(f"forward + backward took {compute / least:.1f}x as long as with `{other.backend}` in this "
                            f"run ({compute:.0f} vs {least:.0f} ms per step): this backend's loader threads compete "
                            f"with the model for the {cores} cores")
        if wait > INPUT_BOUND_SHARE:
            if p.workers < cores:
                p.advice.append(f"loader.workers={p.workers} of {cores} cores; the loader waited {wait:.0%} of the "
                                "step: more workers can prepare batches in parallel")
        else:
            p.advice.append(f"the step is spent in {ranked[0].name} ({ranked[0].share:.0%}): faster input would "
                            f"save at most the {wait:.0%} the loader wait takes")
        if device_mib and p.peak_mib is not None and p.peak_mib < device_mib / 2:
            p.advice.append(f"peak memory {p.peak_mib / 1024:.1f} GiB of {device_mib / 1024:.0f} GiB: "
                            "loader.batch_size could grow")


def markdown(profiles: list[BackendProfile], header: list[str]) -> str:
    """The tables and verdicts, one section per backend, under `header` lines (device, versions, command)."""
    lines = [*header, ""]
    for p in profiles:
        lines += [f"## {p.backend}", "",
                  f"{p.images_per_s:,.0f} images/s; step {p.step_ms.median_ms:.1f} ms median "
                  f"(p10 {p.step_ms.p10_ms:.1f}, p90 {p.step_ms.p90_ms:.1f}) over {p.steps} steps of "
                  f"{p.batch_size} images, views {p.views}; the stages sum to {p.marked_ms_per_step:.1f} ms per "
                  f"step (mean) against {p.wall_ms_per_step:.1f} ms of wall time", "",
                  "| stage | median ms | p10 ms | p90 ms | share | peak MiB |", "|---|---|---|---|---|---|"]
        for s in p.stages:
            peak = f"{s.peak_mib:,.0f}" if s.peak_mib is not None else "-"
            lines.append(f"| {s.name} | {s.median_ms:.2f} | {s.p10_ms:.2f} | {s.p90_ms:.2f} | {s.share:.1%} | {peak} |")
        lines += ["", f"Verdict: {p.verdict}.", ""] + [f"- {a}" for a in p.advice] + [""]
    return "\n".join(lines)


def as_json(profiles: list[BackendProfile]) -> list[dict]:
    return [asdict(p) for p in profiles]
