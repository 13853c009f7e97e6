"""fastssl as a user installs it: a wheel in a fresh venv, not the editable install the suite runs on.

The editable install maps whole folders, so a package setup.py leaves out still imports in every
other test and only dies with ModuleNotFoundError after a normal `pip install` (fastssl.evaluation
did, and with it `fastssl eval` and `fastssl bench heads`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
import setuptools  # noqa: F401  (first: `distutils` is then setuptools' own, also where Python has none)
from distutils.core import run_setup

from fastssl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
# Not source: VCS and tool folders (hidden), build outputs and runs (.gitignore), and the tests.
SKIP_DIRS = {"build", "dist", "runs", "gpu-results", "__pycache__", "tests"}


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIP_DIRS or name.endswith(".egg-info")


def declared(monkeypatch) -> tuple[list[str], dict[str, str]]:
    """setup.py's packages and package_dir, read without building anything."""
    monkeypatch.chdir(ROOT)   # setup.py's folders are relative to the project root, as pip runs it
    dist = run_setup(str(ROOT / "setup.py"), stop_after="init")
    return dist.packages, dist.package_dir


def source_packages(package_dir: dict[str, str]) -> dict[Path, str | None]:
    """Every folder of the source tree with an __init__.py -> the package name package_dir gives it
    (None where no mapped root contains it)."""
    roots = {Path(folder): name for name, folder in package_dir.items()}
    found = {}
    for here, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not _skipped(d)]
        if "__init__.py" not in files:
            continue
        rel = Path(here).relative_to(ROOT)
        mapped = [r for r in roots if rel == r or r in rel.parents]
        if mapped:
            root = max(mapped, key=lambda r: len(r.parts))
            found[rel] = ".".join([roots[root], *rel.relative_to(root).parts])
        else:
            found[rel] = None
    return found


def test_setup_declares_every_package_of_the_source_tree(monkeypatch):
    packages, package_dir = declared(monkeypatch)
    found = source_packages(package_dir)
    assert [str(f) for f, name in found.items() if name is None] == [], "folders outside every package_dir root"
    assert sorted(packages) == sorted(found.values())


def cli_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command itself and every verb and sub-verb under it, from the parser."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += cli_paths(sub, prefix + (name,))
    return paths


def run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path, monkeypatch):
    _, package_dir = declared(monkeypatch)
    # Built from a clean copy: pip builds in place, and a stale build/lib from an earlier build would put
    # packages into the wheel that setup.py no longer names (and litter the shared checkout).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=lambda _, names: [n for n in names if _skipped(n)])
    wheels = tmp_path / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-q", "-w", wheels, src], tmp_path, os.environ)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("fastssl-*.whl")

    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    modules = {"/".join([*name.split("."), py.name])
               for folder, name in source_packages(package_dir).items() for py in (ROOT / folder).glob("*.py")}
    assert sorted(modules - in_wheel) == []

    # A venv of its own, torch and the other dependencies borrowed from this interpreter's site-packages
    # through a .pth. A folder a .pth adds is not a site dir: the editable install's finder .pth in it
    # is not run, so `import fastssl` can only find the wheel's copy.
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, os.environ)
    assert made.returncode == 0, made.stderr
    python, fastssl = venv / "bin" / "python", venv / "bin" / "fastssl"
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                     "-q", wheel], tmp_path, os.environ)
    assert installed.returncode == 0, installed.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       tmp_path, env).stdout.strip())
    (purelib / "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    where = run([python, "-c", "import fastssl, fastssl.evaluation; print(fastssl.__file__)"], tmp_path, env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(purelib), where.stdout

    paths = cli_paths(build_parser())
    assert ("eval",) in paths and ("bench", "heads") in paths and ("data", "photos") in paths
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        helps = list(pool.map(lambda p: run([fastssl, *p, "--help"], tmp_path, env), paths))
    for path, result in zip(paths, helps):
        assert result.returncode == 0 and result.stdout.startswith("usage: fastssl"), (path, result.stderr)

    out = tmp_path / "run"
    trained = run([fastssl, "train", "--set", "train.max_steps=2", "--set", "data.num_train=64",
                   "--set", "data.num_test=32", "--set", "loader.batch_size=16", "--set", "augment.impl=reference",
                   "--out", out], tmp_path, env)
    assert trained.returncode == 0, trained.stderr
    evaluated = run([fastssl, "eval", "--ckpt", out / "last.pt", "--protocol", "knn"], tmp_path, env)
    assert evaluated.returncode == 0, evaluated.stderr
    top1 = json.loads((out / "eval_knn.json").read_text())["results"]["top1"]
    assert 0.0 <= top1 <= 1.0
    # What a user does next with the encoder: export it (the formats are found as files of the installed
    # package) and write its features.
    exported = run([fastssl, "export", out, "--format", "safetensors"], tmp_path, env)
    assert exported.returncode == 0, exported.stderr
    assert "check: max abs error 0 " in exported.stdout and (out / "online_encoder.safetensors").is_file()
    features = run([fastssl, "features", out, "--split", "test"], tmp_path, env)
    assert features.returncode == 0, features.stderr
    assert np.load(out / "features" / "test_labels.npy").shape == (32,)
    # The Python API from the installed wheel: a torchvision ResNet on a nested folder of unlabelled images
    frames = tmp_path / "frames"
    for i in range(16):
        (frames / f"cam{i % 2}" / f"day{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 30, 3), i * 9, np.uint8)).save(frames / f"cam{i % 2}" / f"day{i % 3}" / f"{i}.png")
    api = run([python, "-c", "import fastssl; print(fastssl.train(out='r', data='frames', model='torchvision/resnet18', "
               "method='simclr', settings={'train.max_steps': 2, 'loader.batch_size': 8}).dir)"], tmp_path, env)
    assert api.returncode == 0 and api.stdout.strip() == "r", api.stderr
    assert (tmp_path / "r" / "last.pt").is_file()
