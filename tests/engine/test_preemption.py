"""Preemption: SIGTERM or SIGUSR1 stops the run after its current step with one checkpoint, the process
exits EXIT_PREEMPTED, and the run resumed from that checkpoint is the uninterrupted run, bit for bit.
Under torchrun the ranks stop after the same step even when the signal reached one of them."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastssl.checkpoint import digests, load_checkpoint
from fastssl.config import load_config
from fastssl.engine.metrics import read_metrics, TIMING_KEYS
from fastssl.engine.preemption import EXIT_PREEMPTED, Preempted, PreemptionWatch
from fastssl.engine.trainer import Trainer

TINY = ["data.num_train=128", "data.num_test=64", "loader.batch_size=32", "train.max_steps=6", "train.log_every=2",
        "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=10", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference"]


def _without_timing(path):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(path)]


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_signal_saves_after_the_step_and_the_resumed_run_is_the_straight_one(tmp_path, signum):
    cfg = load_config(None, TINY)
    Trainer(cfg, tmp_path / "straight").fit()
    trainer = Trainer(cfg, tmp_path / "stopped")
    step = trainer.train_step

    def signalled(task):   # the signal lands inside step 3 (between its work and the next step)
        step(task)
        if trainer.run.step == 3:
            os.kill(os.getpid(), signum)
    trainer.train_step = signalled
    name = signal.Signals(signum).name
    with pytest.raises(Preempted, match=rf"preempted by {name}: saved .*last.pt at step 3; continue with "
                                        rf"fastssl train --resume "):
        trainer.fit()
    assert signal.getsignal(signum) is signal.SIG_DFL            # the handler is the run's alone
    stopped = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert stopped["run"]["step"] == 3 and not stopped["run"]["finished"]
    # the interval's losses (log_every=2) went into the checkpoint: the resumed run logs step 4's mean
    Trainer(cfg, tmp_path / "stopped", resume=True).fit()
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert digests(a) == digests(b) and a["run"]["step"] == b["run"]["step"] == 6   # every tensor, bit for bit
    assert _without_timing(tmp_path / "straight" / "metrics.jsonl") == _without_timing(tmp_path / "stopped" /
                                                                                       "metrics.jsonl")


def test_the_cli_exits_with_the_preempted_code_and_says_how_to_continue(tmp_path):
    out = tmp_path / "run"
    run = [o for o in TINY if not o.startswith("train.max_steps")] + ["train.epochs=100", "train.ckpt_every=1"]
    sets = [arg for o in run for arg in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "fastssl", "train", "--out", str(out), *sets],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == EXIT_PREEMPTED == 75
    step = load_checkpoint(out / "last.pt")["run"]["step"]
    assert 0 < step < 400
    assert (f"fastssl train: preempted by SIGTERM: saved {out / 'last.pt'} at step {step}; continue with "
            f"fastssl train --resume {out}") in err


def _vote_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    verdicts = []
    with PreemptionWatch(2, torch.device("cpu")) as watch:
        for step in range(6):
            if rank == 1 and step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)   # one rank only, as a signal sent to one process
            dist.barrier()
            verdicts.append(watch.stop())
        received = watch.received
    torch.save({"verdicts": verdicts, "received": received}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_the_ranks_stop_after_the_same_step_when_one_of_them_got_the_signal(tmp_path, gloo_port):
    mp.spawn(_vote_worker, args=(gloo_port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["received"] for r in ranks] == [None, "SIGUSR1"]
    assert ranks[0]["verdicts"] == ranks[1]["verdicts"] == [False, False, True, True, True, True]
