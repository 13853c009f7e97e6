"""The CLI surface: the verbs it lists, and the environment report checked against direct imports."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fastssl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_exactly_the_working_verbs():
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert sorted(verbs) == ["bench", "data", "env", "eval", "export", "features", "launch", "profile", "train"]
    out = subprocess.run([sys.executable, "-m", "fastssl", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert all(verb in out for verb in ("train", "bench", "data", "env", "profile", "launch"))


def test_env_reports_the_installed_versions(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["cuda"] == (torch.version.cuda or "none")
    assert info["gpu"] == ("none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0))
    # what a CPU result depends on besides the code (README: the same numbers at the same threads and CPU)
    assert info["cpu_threads"] == str(torch.get_num_threads())
    assert info["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "VSX", "ZVECTOR", "SVE256")
    for name, module in [("dali", "nvidia.dali"), ("ffcv", "ffcv")]:
        installed = importlib.util.find_spec(module) is not None
        assert (info[name] != "not installed") == installed
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head:
        assert info["git_commit"].removesuffix("+dirty") == head


def test_git_commit_is_read_once_per_process(monkeypatch):
    """A long process must record the commit of the code it loaded, not the checkout's later state."""
    from fastssl import envinfo

    first = envinfo.git_commit()
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or subprocess.CompletedProcess(a, 0, "x", ""))
    assert envinfo.git_commit() == first and calls == []


def test_git_commit_comes_from_the_environment_where_the_tree_has_no_git(tmp_path):
    """A GPU machine gets the working tree without .git: FASTSSL_COMMIT names the commit instead."""
    env = {**os.environ, "FASTSSL_COMMIT": "0123abc"}
    out = subprocess.run([sys.executable, "-m", "fastssl", "env", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["git_commit"] == "0123abc"
