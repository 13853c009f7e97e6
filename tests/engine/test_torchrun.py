"""torchrun end to end on one machine, as a cluster runs it: two agents as two nodes, a worker killed
and restarted by its agent, and a SLURM job warned, requeued and resumed.

Every run is `fastssl train` under the real `torch.distributed.run` with gloo on the CPU, and each
outcome is compared with an uninterrupted run bit for bit: the checkpoint's every tensor (through their CRC-32s)
and the metrics without their timings.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl.checkpoint import digests, load_checkpoint
from fastssl.engine.metrics import read_metrics, TIMING_KEYS
from fastssl.launch.slurm import CONFIG, SCRIPT
from fastssl.loaders.datasets.index import PROGRESS_MIN

pytestmark = pytest.mark.slow

RUN = ["data.image_size=16", "loader.batch_size=32", "train.log_every=1", "train.device=cpu",
       "train.precision=fp32", "train.deterministic=true", "model.width=0.125", "model.projector_hidden=16",
       "model.projector_out=8", "augment.impl=reference", "method.loss_impl=reference", "knn.every_epochs=0"]
SHAPES = RUN + ["data.num_train=256", "data.num_test=64", "knn.k=5", "train.max_steps=16", "train.ckpt_every=2"]
TIMEOUT = 240


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _torchrun(nproc: int, *launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *launch,
            "-m", "fastssl", "train"]


def _run(command: list[str], cwd: Path | None = None, **env) -> str:
    done = subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same final checkpoint, tensor for tensor, and log the same metrics."""
    x, y = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert x["run"]["step"] == y["run"]["step"]
    assert digests(x) == digests(y)          # the CRC-32 of every tensor of every component
    strip = lambda path: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(path)]  # noqa: E731
    assert strip(a / "metrics.jsonl") == strip(b / "metrics.jsonl")


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run the restart and preemption tests must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(_torchrun(2, "--standalone") + ["--out", str(out), *_sets(SHAPES)])
    return out


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + TIMEOUT
    while not (run / "last.pt").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    return load_checkpoint(run / "last.pt")["run"]["step"]


def _workers(agent: int) -> dict[int, int]:
    """{local rank: pid} of the worker processes a torchrun agent started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"LOCAL_RANK=")]
        if parent == agent and rank:
            found[int(rank[0])] = int(entry.name)
    return found


def _images(root: Path) -> Path:
    """An unlabelled folder of PROGRESS_MIN tiny PNGs in two sub-folders: enough files for the index's
    header pass to print its progress line, which tells which process built the index."""
    rng = np.random.default_rng(0)
    for i in range(PROGRESS_MIN):
        folder = root / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


def test_two_nodes_of_two_equal_one_node_of_four(tmp_path, gloo_port):
    """Two agents, each in its own working folder, meet at a c10d rendezvous as two nodes: the run equals
    the same job on one node of four processes; rank 0 alone writes the shared run folder; the dataset
    index is built once, by one process under its lock, in the shared index folder."""
    data = _images(tmp_path / "data")
    run = RUN + ["data.dataset=images", f"data.path={data}", "train.max_steps=4"]
    one_node = tmp_path / "one-node"
    _run(_torchrun(4, "--standalone") + ["--out", str(one_node), *_sets(run)],
         FASTSSL_INDEX_DIR=str(tmp_path / "index-one-node"))

    shared, index = tmp_path / "shared" / "run", tmp_path / "shared" / "index"
    port = gloo_port   # a free port for the rendezvous
    agents = []
    for node in ("node-a", "node-b"):
        (tmp_path / node).mkdir()
        command = _torchrun(2, "--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
                            "--rdzv-id=two-nodes") + ["--out", str(shared), *_sets(run)]
        agents.append(subprocess.Popen(command, cwd=tmp_path / node, env=_env(FASTSSL_INDEX_DIR=str(index)),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [agent.communicate(timeout=TIMEOUT)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(log[-2000:] for log in logs)

    _same_run(one_node, shared)
    both = "".join(logs)
    assert both.count("run directory: ") == 1 and both.count("knn_top1=") == 1   # one rank reports
    assert sorted(p.name for p in shared.iterdir()) == [".lock", "config.yaml", "curves.png", "env.json",
                                                         "last.pt", "metrics.jsonl"]
    assert [list((tmp_path / node).iterdir()) for node in ("node-a", "node-b")] == [[], []]   # nothing in their cwd
    # One process read the 2,000 headers (the pass reports itself); the three others read its index.
    assert sum(log.count(f"indexing {data}: {PROGRESS_MIN:,}/{PROGRESS_MIN:,} files") for log in logs) == 1
    (built,) = index.glob("*.npz")
    assert sorted(p.name for p in index.iterdir()) == [built.name, built.name + ".lock"]


def test_a_killed_worker_is_restarted_and_resumes_by_itself(tmp_path, two_process_reference):
    """torchrun --max-restarts 2: SIGKILL one worker mid-run; the agent restarts both, they continue from
    the run folder's checkpoint without --resume (TORCHELASTIC_RESTART_COUNT), and the run ends as the
    uninterrupted one did."""
    out = tmp_path / "run"
    command = _torchrun(2, "--standalone", "--max-restarts=2") + ["--out", str(out), *_sets(SHAPES)]
    agent = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(out, agent)
    workers = _workers(agent.pid)
    assert sorted(workers) == [0, 1]
    for pid in workers.values():   # held still, so that the kill lands mid-run however busy the machine is
        os.kill(pid, signal.SIGSTOP)
    killed_at = load_checkpoint(out / "last.pt")["run"]["step"]
    os.kill(workers[1], signal.SIGKILL)
    os.kill(workers[0], signal.SIGCONT)
    log = agent.communicate(timeout=TIMEOUT)[0]
    assert agent.returncode == 0, log[-3000:]
    assert 0 < killed_at < 16
    assert "torchrun restart 1" in log and f"resuming from {out / 'last.pt'}" in log
    _same_run(two_process_reference, out)


def _stub_slurm(bin_dir: Path, requeued: Path) -> None:
    """`srun` runs its command in place (one node); `scontrol` names this host and records a requeue."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(
        '#!/bin/bash\ncase "$1" in\n  show) echo localhost ;;\n'
        f'  requeue) echo "$2" >> {requeued} ;;\n  *) exit 1 ;;\nesac\n')
    for stub in ("srun", "scontrol"):
        (bin_dir / stub).chmod(0o755)


def test_a_slurm_job_warned_before_its_end_saves_requeues_and_resumes_equal(tmp_path, two_process_reference):
    """The generated sbatch script, run by bash with stand-ins for srun and scontrol: SIGUSR1 to the batch
    shell (SLURM's --signal=B:USR1) makes both ranks finish their step, rank 0 save, and the script requeue
    the job; the requeued job resumes by itself and ends as the uninterrupted run did."""
    from fastssl.cli import main

    out = tmp_path / "run"
    assert main(["launch", "slurm", "--nodes", "1", "--gpus-per-node", "2", "--warn-seconds", "60",
                 "--out", str(out), *_sets(SHAPES)]) == 0
    requeued = tmp_path / "requeued"
    _stub_slurm(tmp_path / "bin", requeued)
    env = _env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="1",
               SLURM_JOB_NODELIST="localhost")
    job = subprocess.Popen(["bash", str(out / SCRIPT)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(out, job)
    job.send_signal(signal.SIGUSR1)
    log = job.communicate(timeout=TIMEOUT)[0]
    assert job.returncode == 0, log[-3000:]
    saved = load_checkpoint(out / "last.pt")["run"]["step"]
    assert 0 < saved < 16 and requeued.read_text() == "4242\n"
    assert f"preempted by SIGTERM: saved {out / 'last.pt'} at step {saved}" in log

    again = subprocess.run(["bash", str(out / SCRIPT)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert requeued.read_text() == "4242\n"                 # finished: not requeued again
    assert f"resuming from {out / 'last.pt'} at step {saved}" in again.stderr
    _same_run(two_process_reference, out)
    assert (out / CONFIG).is_file()
