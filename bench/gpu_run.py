"""Every GPU measurement that matters, in one command that fits a borrowed GPU's time limit.

    python bench/gpu_run.py OUT [--deadline 530] [--rehearse] [--cap STEP=SECONDS] [--break STEP]

A GPU machine comes rarely, for minutes, with no network and without .git, and each command it runs
is cut off at a hard limit. So this runs the project's measurements in priority order under one
deadline, each step in its own process group with its own cap: a step that fails or runs out of time
is recorded and the next step runs. OUT receives three files, rewritten after every step so a run cut
short still returns what it measured: `gpu_run.log` (everything every step printed), `summary.md`
(one table: measurement, target, result, met or not, and the CSV row behind it) and
`results.tar.gz` (every CSV, JSON, Markdown, PNG and XML the steps wrote).

It needs only the standard library until the project is installed, because the install is its
first step: `pip install --no-deps --no-build-isolation --no-index -e .` into the running Python
(no network there), or, where pip cannot build (no setuptools), the package laid out by symlinks and
put on PYTHONPATH. The commit comes from $FASTSSL_COMMIT, else a `.commit` file in the tree (write it
before sending the tree: `git rev-parse HEAD > .commit`), else git. A step that needs a package the
image lacks (timm for the ViT) is skipped, saying so, unless its pure-Python wheel is carried in
`.wheels/` (`pip download --no-deps timm==1.0.29 -d .wheels`): every wheel there goes on the steps'
PYTHONPATH and is imported from the zip.

`--rehearse` runs every step at tiny sizes (the kernels under Triton's interpreter where there is no
GPU) through the same deadline, caps and outputs: CI runs it, so the command a GPU session runs has
always run before. `--break STEP` makes a step fail on purpose, to rehearse the recovery.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if __package__:
    from . import gpu_targets
else:                       # run as a script before the project is installed: bench/ is sys.path[0]
    import gpu_targets

ROOT = Path(__file__).resolve().parents[1]
MIN_STEP_SECONDS = 15       # a step with less time left than this is skipped, not started
KILL_GRACE = 5              # seconds between SIGTERM and SIGKILL of a step that ran out of time
ARCHIVE_SUFFIXES = {".csv", ".json", ".md", ".png", ".xml", ".txt"}
INSTALL = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", "-e"]
# The subpackages whose folders sit at the top of the tree but install inside fastssl (setup.py).
MAPPED = {"kernels": "kernels", "loaders": "loaders", "bench": "bench"}
WHEELS = ROOT / ".wheels"   # git-ignored: pure-Python wheels carried for what the GPU image lacks (timm)


@dataclass
class Run:
    """What every step's command line needs: where to write, how big, and which Python."""
    python: list[str]
    scratch: Path
    rehearse: bool
    gpu: bool

    def out(self, step: str) -> str:
        path = self.scratch / step
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def fastssl(self, *args: str) -> list[str]:
        return [*self.python, "-m", "fastssl", *args]


@dataclass
class Step:
    name: str
    cap: int                                    # seconds
    command: Callable[[Run], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()                 # modules beyond the GPU image's: skipped, saying so, without one


def _sizes(run: Run, real: list[str], tiny: list[str]) -> list[str]:
    return tiny if run.rehearse else real


def _env_command(run: Run) -> list[str]:
    script = ("import json, subprocess, sys\n"
              "from fastssl import envinfo\n"
              "info = envinfo.collect()\n"
              "try:\n"
              "    q = 'name,driver_version,clocks.max.sm,clocks.max.mem,memory.total,power.limit'\n"
              "    info['nvidia_smi'] = subprocess.run(['nvidia-smi', '--query-gpu=' + q, '--format=csv,noheader'],\n"
              "                                        capture_output=True, text=True, timeout=20).stdout.strip()\n"
              "except OSError:\n"
              "    info['nvidia_smi'] = 'not found'\n"
              "import torch\n"
              "from fastssl.bench.augment_bench import peak_bandwidth\n"
              "peak = peak_bandwidth(torch.device('cuda')) if torch.cuda.is_available() else None\n"
              "info['peak_dram_gb_s'] = peak and peak / 1e9\n"
              f"open({run.out('env') + '/env.json'!r}, 'w').write(json.dumps(info, indent=2))\n"
              "print(json.dumps(info, indent=2))\n")
    return [*run.python, "-c", script]


def _tests_command(run: Run) -> list[str]:
    args = [*run.python, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q",
            f"--junitxml={run.out('tests')}/gpu-tests.xml"]
    if _has_module(run, "xdist") and not run.rehearse:
        args += ["-n", "4"]
    if _has_module(run, "pytest_timeout"):
        args += ["--timeout", "150"]
    return args


def _has_module(run: Run, name: str, env: dict | None = None) -> bool:
    probe = subprocess.run([*run.python, "-c", f"import {name}"], capture_output=True, timeout=60, env=env)
    return probe.returncode == 0


def _kernels(kernel: str, real: list[str], tiny: list[str], out: str) -> Callable[[Run], list[str]]:
    return lambda run: run.fastssl("bench", "kernels", "--kernel", kernel, "--out", run.out(out),
                                   *_sizes(run, real, tiny))


def _loader(run: Run) -> list[str]:
    real = ["--res", "32", "--batch", "512", "--workers", "12", "--seconds", "10", "--windows", "5"]
    tiny = ["--res", "32", "--batch", "32", "--workers", "1", "--seconds", "1", "--windows", "2"]
    return run.fastssl("bench", "loader", "-c", str(ROOT / "configs/augment/simclr_cifar.yaml"),
                       "--backends", "tensor,torchvision", "--data", "random", "--views", "2",
                       "--set", "data.num_train=50000" if not run.rehearse else "data.num_train=256",
                       "--json", run.out("loader") + "/loader.json", "--out", run.out("loader"),
                       *_sizes(run, real, tiny))


def _train(name: str, config: str, real: list[str], tiny_model: tuple[str, ...] = ()) -> Callable[[Run], list[str]]:
    """bench train of the tensor backend on data-free images, bf16 and channels_last as configured;
    `tiny_model`: the rehearsal's stand-in for a network `real` names that 32 px cannot take."""
    tiny = ["--set", "data.image_size=32", "--set", "data.num_train=64", "--set", "loader.batch_size=16",
            "--set", "model.projector_hidden=32", "--set", "model.projector_out=16",
            "--set", "model.width=0.125", "--set", "train.precision=fp32",
            "--steps", "1", "--windows", "2", "--warmup", "1", *tiny_model]
    return lambda run: run.fastssl(
        "bench", "train", "-c", str(ROOT / config), "--backends", "tensor", "--out", run.out(name),
        "--set", "data.dataset=random", "--set", "data.path=null", "--set", "data.num_test=16",
        "--set", "loader.backend=tensor", *_sizes(run, real, tiny))


STEPS = [
    Step("env", 45, _env_command),
    Step("tests", 170, _tests_command, env={"FASTSSL_AUTOTUNE": "quick"}),
    Step("sim_xent", 110, _kernels("sim_xent", ["--sizes", "8192x128", "--dtypes", "bf16"],
                                   ["--sizes", "128x32", "--dtypes", "fp32", "--reps", "2"], "sim_xent")),
    Step("sim_xent_memory", 70, _kernels(
        "sim_xent", ["--sizes", "131072x128", "--dtypes", "bf16", "--providers", "triton,eager",
                     "--modes", "forward+backward", "--reps", "5", "--warmup", "1"],
        ["--sizes", "128x16", "--dtypes", "fp32", "--providers", "triton,eager", "--modes",
         "forward+backward", "--reps", "1", "--warmup", "0"], "sim_xent_memory")),
    # DINO's loss at the shape: 10 views (2 teacher), 256 images, 65,536 prototypes of 256. One
    # autotune config: Triton compiles without benchmarking, leaving the cap to torch.compile of the reference.
    Step("proto_xent", 75, _kernels("proto_xent", ["--sizes", "10x2x256x65536x256", "--dtypes", "bf16", "--reps",
                                                   "10", "--warmup", "2"],
                                    ["--sizes", "3x2x16x128x16", "--dtypes", "fp32", "--reps", "1", "--warmup", "0"],
                                    "proto_xent"), env={"FASTSSL_AUTOTUNE": "quick"}),
    Step("ridge", 60, _kernels("ridge", ["--sizes", "64x25x640,1x512x128,1x4096x128", "--dtypes", "fp32"],
                               ["--sizes", "4x25x32,1x512x128", "--dtypes", "fp32", "--reps", "2"], "ridge")),
    Step("augment", 45, _kernels("augment", ["--sizes", "full", "--dtypes", "bf16"],
                                 ["--sizes", "8x32,2x80", "--dtypes", "fp32", "--reps", "2"], "augment")),
    Step("loader", 50, _loader),
    Step("train_resnet18", 75, _train("train_resnet18", "configs/cifar10_jpeg.yaml",
                                      ["--set", "train.precision=bf16", "--steps", "10", "--windows", "3",
                                       "--warmup", "15"])),
    Step("train_resnet50", 110, _train("train_resnet50", "configs/imagenet_resnet50.yaml",
                                       ["--set", "data.num_train=1024", "--steps", "5", "--windows", "3",
                                        "--warmup", "6"])),
    # ViT-S/16 through model.arch=timm/...: AdamW (optim.name=auto; the config names LARS), SDPA attention.
    Step("train_vit_small", 60, _train("train_vit_small", "configs/imagenet_resnet50.yaml",
                                       ["--model", "timm/vit_small_patch16_224", "--set", "optim.name=auto",
                                        "--set", "data.num_train=1024", "--set", "loader.batch_size=128",
                                        "--steps", "10", "--windows", "3", "--warmup", "10"],
                                       ("--model", "timm/vit_small_patch16_224={img_size: 32, patch_size: 8, depth: 1}",
                                        "--set", "optim.name=auto")), needs=("timm",)),
]
PEER_SITE = ROOT / ".peers-site"     # git-ignored: kept between calls on a warm machine
PEER_WHEELS = ROOT / ".peer-wheels"   # `make peer-bundle`: the peers' wheels for the GPU image's Python
PEER_DATA = ROOT / ".peer-data"       # `make peer-bundle`: CIFAR-10 JPEG, 500 train / 200 test per class


def _peer_install(run: Run) -> list[str]:
    """pip install --target .peers-site every wheel carried in .peer-wheels/ (none: nothing to do; a
    rehearsal uses the peers of the running Python)."""
    wheels = sorted(str(w) for w in PEER_WHEELS.rglob("*.whl")) if PEER_WHEELS.is_dir() else []
    if run.rehearse or not wheels:
        why = "rehearsal: the peers of this Python" if run.rehearse else f"no wheels in {PEER_WHEELS}"
        return [*run.python, "-c", f"print({why!r})"]
    return [*run.python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--upgrade",
            "--target", str(PEER_SITE), *wheels]


def _peers(name: str, real: list[str], tiny_shape: list[str], data: Callable[[Run], str]
           ) -> Callable[[Run], list[str]]:
    """fastssl bench peers, width 1, every peer, fastssl's tensor and torchvision backends, bf16 on CUDA;
    rehearsed at width 1/8 on 4 images a class, on the same network kind (`tiny_shape`)."""
    tiny = ["--width", "0.125", "--batch", "16", "--epochs", "1", "--limit-train", "4", "--limit-test", "2",
            "--skip", "0", "--window", "1", "--workers", "1", "--methods", "simclr", *tiny_shape]
    return lambda run: run.fastssl(
        "bench", "peers", "--data", data(run), "--peers", "fastssl,lightly,lightly-train,solo-learn",
        "--backends", "tensor,torchvision", "--no-probe", "--work", run.out(name) + "/work",
        "--out", run.out(name) + f"/{name}", *_sizes(run, real, tiny))


def _cifar(run: Run) -> str:
    """$FASTSSL_PEER_DATA (a rehearsal's ImageFolder), else the carried .peer-data."""
    return os.environ.get("FASTSSL_PEER_DATA") or str(PEER_DATA)


def _photos(run: Run) -> str:
    return run.out("photos_data") + "/photos"


# `--suite peers`: fastssl beside lightly and LightlyTrain on the GPU (README "On a GPU").
PEER_STEPS = [
    Step("env", 45, _env_command),
    Step("peer_install", 120, _peer_install),
    Step("peers_resnet18", 200, _peers("peers_resnet18", [
        "--arch", "resnet18", "--res", "32", "--batch", "256", "--epochs", "3", "--workers", "12",
        "--methods", "simclr,byol", "--skip", "10", "--window", "5"], ["--arch", "resnet18", "--res", "32"],
        _cifar)),
    Step("photos", 40, lambda run: run.fastssl("data", "photos", _photos(run),
                                               *_sizes(run, ["--train", "2560", "--test", "256"],
                                                       ["--train", "40", "--test", "20"]))),
    Step("peers_resnet50", 150, _peers("peers_resnet50", [
        "--arch", "resnet50", "--res", "224", "--batch", "128", "--epochs", "1", "--workers", "12",
        "--methods", "simclr", "--skip", "5", "--window", "3"], ["--arch", "resnet50", "--res", "64"], _photos)),
]
SUITES = ("all", "peers")
STEP_NAMES = ["install"] + [s.name for s in STEPS]


def suite_steps(suite: str) -> list[Step]:
    """The suite's steps, looked up when run (so a test may replace STEPS)."""
    return STEPS if suite == "all" else PEER_STEPS


def step_names(suite: str) -> list[str]:
    return ["install"] + [s.name for s in suite_steps(suite)]


class Log:
    """The full log: every line of every step, also echoed (the device tool returns the tail)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, line: str) -> None:
        self.file.write(line + "\n")
        print(line, flush=True)


def commit() -> str:
    if os.environ.get("FASTSSL_COMMIT"):
        return os.environ["FASTSSL_COMMIT"]
    if (ROOT / ".commit").is_file():
        return (ROOT / ".commit").read_text().strip()
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_process(argv: list[str], cap: float, env: dict, log: Log) -> tuple[int | None, float]:
    """Run argv in its own process group, its output streamed to the log; (return code or None when it
    ran out of time, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    timed_out = False

    def kill():
        nonlocal timed_out
        timed_out = True
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    timer = threading.Timer(cap, kill)
    timer.start()
    try:
        for line in proc.stdout:
            log("  " + line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
    return (None if timed_out else proc.returncode), time.monotonic() - start


def _overlay(scratch: Path) -> Path:
    """The fastssl package as setup.py installs it, by symlinks: for a Python that cannot pip install."""
    site = scratch / "overlay"
    package = site / "fastssl"
    package.mkdir(parents=True)
    for entry in (ROOT / "fastssl").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(ROOT / folder)
    return site


def install(run: Run, env: dict, log: Log) -> gpu_targets.Outcome:
    """pip install -e without network or build isolation; if that fails, the symlink overlay. Either
    way the result is checked by importing every subpackage from outside the tree."""
    probe = [*run.python, "-c", "import fastssl.kernels, fastssl.loaders, fastssl.bench, fastssl.cli; "
             "print('fastssl from', fastssl.__file__)"]
    pip = [*run.python, *INSTALL, str(ROOT)] + (["--dry-run"] if run.rehearse else [])
    log("$ " + " ".join(pip))
    code, _ = run_process(pip, 120, env, log)
    if code == 0 and run_process(probe, 60, env, log)[0] == 0:
        return gpu_targets.Outcome("install", "ok", "pip install -e (no index, no build isolation)")
    log("pip install did not give an importable fastssl: using the symlink overlay")
    site = _overlay(run.scratch)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    run.python.append("-P")                      # the tree's own fastssl/ must not shadow the overlay
    probe = [*run.python, *probe[1:]]
    if run_process(probe, 60, env, log)[0] == 0:
        return gpu_targets.Outcome("install", "ok", f"symlink overlay at {site} (pip exited {code})")
    return gpu_targets.Outcome("install", "failed", "neither pip nor the overlay gave an importable fastssl")


def archive(scratch: Path, out: Path) -> None:
    """results.tar.gz of every result file the steps wrote, written aside and renamed (never torn)."""
    partial = out / "results.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(scratch.rglob("*")):
            if path.is_file() and path.suffix in ARCHIVE_SUFFIXES and "overlay" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(scratch)))
    partial.replace(out / "results.tar.gz")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_run.log, summary.md and results.tar.gz")
    parser.add_argument("--deadline", type=float, default=530, help="seconds for the whole run (default: "
                        "%(default)s, under a 10-minute command limit with room to send the files back)")
    parser.add_argument("--suite", choices=SUITES, default="all", help="all: every measurement of "
                        "the project; peers: fastssl beside lightly and LightlyTrain (needs .peer-wheels/ and "
                        ".peer-data/ from `make peer-bundle`)")
    parser.add_argument("--only", help="comma-separated steps to run, the others skipped (e.g. a first call "
                        "that only installs: --only env,peer_install)")
    parser.add_argument("--rehearse", action="store_true", help="every step at tiny sizes (CPU: Triton's "
                        "interpreter), same deadline logic and outputs")
    parser.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS",
                        help=f"override one step's cap; steps: {', '.join(STEP_NAMES)}")
    parser.add_argument("--break", dest="broken", action="append", default=[], metavar="STEP",
                        help="make STEP fail on purpose (rehearses the recovery)")
    args = parser.parse_args(argv)
    caps = {}
    for item in args.cap:
        name, _, seconds = item.partition("=")
        try:
            caps[name] = float(seconds)
        except ValueError:
            parser.error(f"--cap {item!r}: must be STEP=SECONDS")
        names = step_names(args.suite)
        if name not in names or caps[name] <= 0:
            parser.error(f"--cap {item!r}: STEP must be one of {', '.join(names)}, SECONDS > 0")
    unknown = set(args.broken) - set(step_names(args.suite))
    if unknown:
        parser.error(f"--break {sorted(unknown)}: must be one of {', '.join(step_names(args.suite))}")
    args.only = [x.strip() for x in args.only.split(",")] if args.only else None
    if args.only and set(args.only) - set(step_names(args.suite)):
        parser.error(f"--only {sorted(set(args.only) - set(step_names(args.suite)))}: must be among "
                     f"{', '.join(step_names(args.suite))}")
    if args.deadline <= 0:
        parser.error(f"--deadline {args.deadline}: must be > 0")
    args.caps = caps
    return args


def _step_env(run: Run, base: dict, step: Step) -> dict:
    env = {**base, **step.env}
    if run.rehearse and not run.gpu:
        env["TRITON_INTERPRET"] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("gpu_run.log", "summary.md", "results.tar.gz"):
        (out / name).unlink(missing_ok=True)
    log = Log(out / "gpu_run.log")
    scratch = Path(tempfile.mkdtemp(prefix="fastssl-gpu-run-"))
    gpu = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
    run = Run([sys.executable], scratch, args.rehearse, gpu)
    sha = commit()
    env = {**os.environ, "FASTSSL_COMMIT": sha, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    header = gpu_targets.Header(commit=sha, rehearse=args.rehearse, deadline=args.deadline,
                                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    outcomes: list[gpu_targets.Outcome] = []

    def left() -> float:
        return args.deadline - (time.monotonic() - start)

    def finish_step() -> None:
        archive(scratch, out)
        (out / "summary.md").write_text(gpu_targets.summary(header, outcomes, scratch))

    log(f"# gpu_run {'rehearsal ' if args.rehearse else ''}commit {sha}, deadline {args.deadline:.0f} s, "
        f"scratch {scratch}")
    if "install" in args.broken:
        outcomes.append(gpu_targets.Outcome("install", "failed", "broken on purpose (--break install)"))
    else:
        outcomes.append(install(run, env, log))
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if wheels:
        log(f"carried wheels on PYTHONPATH: {', '.join(Path(w).name for w in wheels)}")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), *wheels]))
    finish_step()
    if args.suite == "peers":   # the peers' wheels, installed by this call's peer_install or an earlier call's
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(PEER_SITE)]))
    for step in suite_steps(args.suite):
        if args.only and step.name not in args.only:
            outcomes.append(gpu_targets.Outcome(step.name, "skipped", "not asked (--only)"))
            continue
        cap = min(args.caps.get(step.name, step.cap), left())
        if cap < MIN_STEP_SECONDS:
            log(f"## {step.name}: skipped, {left():.0f} s left of the deadline")
            outcomes.append(gpu_targets.Outcome(step.name, "skipped", f"deadline ({left():.0f} s left)"))
            finish_step()
            continue
        missing = [m for m in step.needs if not _has_module(run, m, _step_env(run, env, step))]
        if missing:
            why = f"needs {', '.join(missing)}, not importable here (carry its wheel in {WHEELS.name}/)"
            log(f"## {step.name}: skipped, {why}")
            outcomes.append(gpu_targets.Outcome(step.name, "skipped", why))
            finish_step()
            continue
        argv = step.command(run)
        if step.name in args.broken:
            argv = [*run.python, "-c", f"raise SystemExit('{step.name} broken on purpose (--break)')"]
        log(f"## {step.name}: cap {cap:.0f} s, t = {time.monotonic() - start:.0f} s\n$ {' '.join(argv)}")
        code, seconds = run_process(argv, cap, _step_env(run, env, step), log)
        status = "timed out" if code is None else "ok" if code == 0 else "failed"
        detail = f"{seconds:.0f} s" + ("" if code in (0, None) else f", exit {code}")
        log(f"## {step.name}: {status} ({detail})")
        outcomes.append(gpu_targets.Outcome(step.name, status, detail))
        finish_step()
    header.elapsed = time.monotonic() - start
    finish_step()
    print((out / "summary.md").read_text())
    return 0 if all(o.status in ("ok", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
