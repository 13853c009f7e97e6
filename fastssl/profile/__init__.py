"""`fastssl profile`: where the time of a training step goes, per backend, and what to change.

run.py drives the real training step per backend, report.py turns the stage timings into statistics,
a verdict and advice, plot.py draws them; this module writes profile.json, profile.md and profile.png.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from fastssl import envinfo
from fastssl.loaders import atomic

from .plot import plot_stages
from .report import ADD_UP_TOLERANCE, INPUT_BOUND_SHARE, BackendProfile, as_json, judge, markdown
from .run import cores, profile

__all__ = ["profile", "write_profile"]


def write_profile(profiles: list[BackendProfile], out: Path, command: str, device: str, sync: bool,
                  device_mib: float | None = None) -> str:
    """Judge the profiles, write the three files under `out`; returns the Markdown (also printed)."""
    judge(profiles, cores(), device_mib)
    info = envinfo.collect()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    mode = ("--sync: the device synchronised at every stage boundary (exact attribution, perturbed step)"
            if sync else "events/timers read once per run (no synchronisation per stage)")
    header = ["# Training step profile", "",
              f"{device}; {cores()} cores; torch {info['torch']}; commit {info['git_commit']}; {now}", "",
              f"Command: `{command}`", "",
              f"Timing: {mode}. Shares are of the timed steps' total; the stages add up to the wall time "
              f"of the steps within {ADD_UP_TOLERANCE:.0%} (checked). Input-bound: the loader wait is over "
              f"{INPUT_BOUND_SHARE:.0%} of the step."]
    text = markdown(profiles, header)
    meta = {"device": device, "cores": cores(), "torch": info["torch"], "commit": info["git_commit"], "date": now,
            "command": command, "sync": sync, "profiles": as_json(profiles)}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "profile.json", json.dumps(meta, indent=1) + "\n")
    atomic.write_text(out / "profile.md", text)
    plot_stages(profiles, out / "profile.png", f"training step by stage ({device}; views {profiles[0].views})")
    return text
