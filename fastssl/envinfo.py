"""Versions of everything a bug report or a benchmark row needs, and the git commit of the code."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

import fastssl

NOT_INSTALLED = "not installed"


def _module_version(distribution: str) -> str:
    """The installed version from package metadata, without importing the package: importing ffcv
    changes torch's thread count (loaders/ffcv_imports.py), and its __version__ is stale (0.0.3rc1)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _dali_version() -> str:
    """DALI's wheel is named after its CUDA build (nvidia-dali-cuda130, ...): whichever is installed."""
    names = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                   if (d.metadata["Name"] or "").startswith("nvidia-dali-cuda"))
    return _module_version(names[0]) if names else NOT_INSTALLED


COMMIT_VARIABLE = "FASTSSL_COMMIT"   # set where the tree has no .git (a copy sent to a GPU machine)


@functools.cache
def git_commit() -> str:
    """HEAD of the checkout fastssl runs from, '+dirty' when it has uncommitted changes; read once per
    process, so a long process (fastssl bench heads trains many runs) records the commit of the code
    it loaded, not whatever the checkout holds when a later run starts. $FASTSSL_COMMIT wins: a
    working tree copied without .git still says which commit it is."""
    if os.environ.get(COMMIT_VARIABLE):
        return os.environ[COMMIT_VARIABLE]
    root = Path(fastssl.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def gpu_names() -> str:
    if not torch.cuda.is_available():
        return "none"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def collect() -> dict[str, str]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "fastssl": fastssl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _module_version("triton"),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn else "none",
        "gpu": gpu_names(),
        "dali": _dali_version(),
        "ffcv": _module_version("ffcv"),
        "numpy": _module_version("numpy"),
        # CPU results are reproducible at a given thread count only: threads change the order of float sums.
        "cpu_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),   # the kernels' instruction set: AVX2, AVX512
        "git_commit": git_commit(),
    }
