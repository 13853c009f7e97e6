"""`fastssl launch slurm`: an sbatch script that runs one torchrun agent per node and survives preemption.

The script is plain bash a user can read and edit. Its parts, and why:
- one task per node (`srun --ntasks-per-node=1`), each a torchrun agent that starts the node's workers;
  the agents meet at a c10d rendezvous on the job's first node, on a port derived from the job id so
  that two jobs sharing a first node do not collide;
- `--signal=B:USR1@WARN`: SLURM warns the batch shell WARN seconds before the time limit; the shell
  forwards SIGTERM to the step (srun passes it to every agent, each agent to its workers), every rank
  finishes its step, rank 0 saves one checkpoint, and the shell requeues the job (`--requeue`,
  `scontrol requeue`). The requeued job runs the same command, and `train.auto_resume=true` continues
  from the run directory's checkpoint after the same config and data checks as `--resume`. A SIGTERM
  from SLURM itself (a preemption with `PreemptMode=REQUEUE`, or `scancel`) takes the same path.
- `--max-restarts`: a worker that dies (a bad node, an out-of-memory kill) makes torchrun restart the
  workers, which resume from the last checkpoint (`TORCHELASTIC_RESTART_COUNT`), without a requeue.
- The run's config is resolved now and written beside the script (`RUN/slurm.yaml`): a requeue days
  later runs what was submitted, and an invalid config fails here, not after hours in the queue.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastssl import config as config_mod
from fastssl.config import ConfigError
from fastssl.loaders import atomic

SCRIPT, CONFIG = "slurm.sbatch", "slurm.yaml"
PORT_BASE, PORT_SPAN = 20000, 20000   # rendezvous port: PORT_BASE + job id mod PORT_SPAN
MIN_WARN_S = 30                       # a warning shorter than this leaves no time for a step and a save
TIME_RULE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass(frozen=True)
class SlurmJob:
    """One training run on `nodes` x `gpus_per_node` GPUs, into the shared run directory `out`."""

    out: Path
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 64
    time: str = "24:00:00"
    warn_s: int = 120
    max_restarts: int = 3
    partition: str | None = None
    account: str | None = None
    index_dir: Path | None = None
    sbatch: tuple[str, ...] = ()          # further #SBATCH options, e.g. "--constraint=h100"
    python: str = field(default_factory=lambda: sys.executable)

    def check(self) -> None:
        """ConfigError naming the first option that breaks its rule."""
        for name, value, low in (("--nodes", self.nodes, 1), ("--gpus-per-node", self.gpus_per_node, 1),
                                 ("--cpus-per-task", self.cpus_per_task, 1), ("--max-restarts", self.max_restarts, 0),
                                 ("--warn-seconds", self.warn_s, MIN_WARN_S)):
            if value < low:
                raise ConfigError(f"{name}={value}: must be at least {low}"
                                  + (" (a step and a checkpoint must fit between SLURM's warning and its kill)"
                                     if name == "--warn-seconds" else ""))
        if not TIME_RULE.match(self.time):
            raise ConfigError(f"--time={self.time!r}: must be SLURM's [days-]hours:minutes:seconds, e.g. 24:00:00")
        for option in self.sbatch:
            if not option.startswith("--") or "\n" in option:
                raise ConfigError(f"--sbatch={option!r}: must be one sbatch option starting with --, e.g. "
                                  "--constraint=h100")

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def _directives(job: SlurmJob, name: str) -> list[str]:
    options = [f"--job-name={name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
               f"--gpus-per-node={job.gpus_per_node}", f"--cpus-per-task={job.cpus_per_task}",
               f"--time={job.time}", f"--signal=B:USR1@{job.warn_s}", "--requeue", "--open-mode=append",
               f"--output={job.out / 'slurm-%j.out'}"]
    options += [f"--partition={job.partition}"] * bool(job.partition)
    options += [f"--account={job.account}"] * bool(job.account)
    return [f"#SBATCH {option}" for option in (*options, *job.sbatch)]


def render(job: SlurmJob, config_path: Path, command: str) -> str:
    """The sbatch script's text."""
    q = shlex.quote
    out = q(str(job.out))
    train = [job.python, "-m", "torch.distributed.run", '--nnodes="$SLURM_NNODES"',
             f"--nproc-per-node={job.gpus_per_node}", "--rdzv-backend=c10d", '--rdzv-endpoint="$head:$port"',
             '--rdzv-id="$SLURM_JOB_ID"', f"--max-restarts={job.max_restarts}",
             "-m", "fastssl", "train", "-c", str(config_path), "--out", str(job.out), "--set", "train.auto_resume=true"]
    train = [part if part.startswith("--") and '"' in part else q(part) for part in train]
    index = [f"export FASTSSL_INDEX_DIR={q(str(job.index_dir))}   # the dataset index, built once, on shared "
             "storage"] if job.index_dir else []
    lines = [
        "#!/bin/bash",
        f"# Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}: {job.nodes} node(s) x "
        f"{job.gpus_per_node} GPU(s), one torchrun agent per node.",
        "# Submit: sbatch " + q(str(job.out / SCRIPT)),
        f"# SLURM warns this script {job.warn_s} s before the end (SIGUSR1): every rank finishes its step, rank 0 "
        "saves", "# last.pt, and the job is requeued; the requeued job resumes from it (train.auto_resume=true).",
        *_directives(job, f"fastssl-{job.out.name}"),
        "",
        "set -u",
        *index,
        f"# Newer torchrun waits this long for its workers to save after a SIGTERM (older ones: 30 s).",
        f"export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(job.warn_s - 10, 20)}",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'port=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))',
        "warned=0",
        "step=",
        "warn() {",
        "    warned=1",
        '    echo "fastssl: job $SLURM_JOB_ID warned by SLURM: stopping after the current step" >&2',
        '    [ -n "$step" ] && kill -TERM "$step" 2>/dev/null',
        "}",
        "trap warn USR1 TERM",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\",
        "    " + " \\\n    ".join(" ".join(train[i:i + 4]) for i in range(0, len(train), 4)) + " &",
        "step=$!",
        '[ "$warned" -eq 1 ] && kill -TERM "$step"   # warned before the step had started',
        '# `wait` returns early when a trapped signal arrives: wait until the step has really ended.',
        'while kill -0 "$step" 2>/dev/null; do wait "$step"; done',
        'wait "$step"',
        "code=$?",
        'if [ "$code" -ne 0 ] && [ "$warned" -eq 1 ]; then',
        f'    echo "fastssl: requeueing job $SLURM_JOB_ID; it resumes from {job.out / "last.pt"}" >&2',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "    exit 0",
        "fi",
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def write(job: SlurmJob, cfg: config_mod.Config, command: str) -> Path:
    """Check the job and the config at the job's world size; write RUN/slurm.yaml and RUN/slurm.sbatch."""
    job.check()
    config_mod.validate(cfg, world=job.world)
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {str(job.out)!r}: cannot be created ({e.strerror or e})") from None
    config_path = job.out / CONFIG
    atomic.write_text(config_path, config_mod.dump_yaml(cfg))
    script = job.out / SCRIPT
    atomic.write_text(script, render(job, config_path, command))
    script.chmod(0o755)
    return script


def submit(script: Path) -> str:
    """`sbatch SCRIPT`'s answer (the job id); ConfigError where sbatch is missing or refuses the job."""
    if shutil.which("sbatch") is None:
        raise ConfigError(f"--submit: sbatch is not on PATH (is this a SLURM login node?); {script} is written, "
                          f"submit it from one with: sbatch {script}")
    done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    if done.returncode:
        raise ConfigError(f"--submit: sbatch refused {script} (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()
