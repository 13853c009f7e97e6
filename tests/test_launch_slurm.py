"""`fastssl launch slurm` writes a script that asks SLURM for one task per node, a warning before the end
and requeueing, runs one torchrun agent per node meeting on the first node, and refuses what would fail
in the queue. The script's preemption path runs in tests/engine/test_torchrun.py."""
import re
import shlex
import subprocess
import sys

import pytest

from fastssl.cli import main
from fastssl.config import load_config
from fastssl.launch.slurm import CONFIG, SCRIPT


def _directives(text: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_the_script_asks_for_nodes_a_warning_and_requeueing_and_runs_one_agent_per_node(tmp_path, capsys):
    out = tmp_path / "runs" / "r50"
    assert main(["launch", "slurm", "--nodes", "4", "--gpus-per-node", "8", "--time", "2-00:00:00",
                 "--partition", "gpu", "--sbatch=--constraint=h100", "--index-dir", str(tmp_path / "index"),
                 "--out", str(out), "--set", "loader.batch_size=4096", "--set", "train.epochs=100"]) == 0
    printed = capsys.readouterr().out
    script = (out / SCRIPT).read_text()
    assert f"sbatch {out / SCRIPT}" in printed
    assert _directives(script) == [
        "--job-name=fastssl-r50", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=64",
        "--time=2-00:00:00", "--signal=B:USR1@120", "--requeue", "--open-mode=append",
        f"--output={out / 'slurm-%j.out'}", "--partition=gpu", "--constraint=h100"]
    # the config is resolved now, beside the script, and the job resumes by itself after a requeue
    assert load_config(out / CONFIG).loader.batch_size == 4096
    launch = script[script.index("srun "):script.index(" &\n")].replace("\\\n", " ")
    words = shlex.split(launch.replace('"$', "'$").replace('"', "'"))
    assert words[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert words[3:6] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=$SLURM_NNODES", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=$head:$port",
            "--rdzv-id=$SLURM_JOB_ID", "--max-restarts=3"} <= set(words)
    assert words[words.index("-m", 6):] == ["-m", "fastssl", "train", "-c", str(out / CONFIG), "--out", str(out),
                                            "--set", "train.auto_resume=true"]
    assert f"export FASTSSL_INDEX_DIR={tmp_path / 'index'}" in script
    assert re.search(r"^trap warn USR1 TERM$", script, re.M) and 'scontrol requeue "$SLURM_JOB_ID"' in script
    # a warning that came before the step started is passed on once it has
    assert script.index('step=$!\n[ "$warned" -eq 1 ] && kill -TERM "$step"') > script.index("trap warn")
    assert subprocess.run(["bash", "-n", str(out / SCRIPT)]).returncode == 0      # bash parses it


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes=0: must be at least 1"),
    (["--warn-seconds", "10"], "--warn-seconds=10: must be at least 30 (a step and a checkpoint must fit"),
    (["--time", "tomorrow"], "--time='tomorrow': must be SLURM's [days-]hours:minutes:seconds"),
    (["--sbatch", "constraint=h100"], "--sbatch='constraint=h100': must be one sbatch option starting with --"),
    # the batch must split over the job's 2 x 8 processes, checked now and not after the queue
    (["--nodes", "2", "--set", "loader.batch_size=36"], "loader.batch_size"),
])
def test_what_would_fail_in_the_queue_is_refused_now(tmp_path, capsys, args, message):
    assert main(["launch", "slurm", "--gpus-per-node", "8", "--out", str(tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / SCRIPT).exists()


def test_the_run_folder_is_required(capsys):
    with pytest.raises(SystemExit):
        main(["launch", "slurm", "--nodes", "2"])
    assert "--out" in capsys.readouterr().err


def test_submit_hands_the_script_to_sbatch_and_names_a_missing_or_refusing_one(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/bash\necho "$@" > {tmp_path / "submitted"}\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    out = tmp_path / "run"
    assert main(["launch", "slurm", "--out", str(out), "--gpus-per-node", "2", "--submit"]) == 0
    assert (tmp_path / "submitted").read_text() == f"{out / SCRIPT}\n"
    assert capsys.readouterr().out.splitlines()[-1] == "Submitted batch job 4242"
    sbatch.write_text('#!/bin/bash\necho "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    assert main(["launch", "slurm", "--out", str(out), "--gpus-per-node", "2", "--submit"]) == 2
    assert "--submit: sbatch refused" in capsys.readouterr().err
    sbatch.unlink()
    assert main(["launch", "slurm", "--out", str(out), "--gpus-per-node", "2", "--submit"]) == 2
    assert f"--submit: sbatch is not on PATH (is this a SLURM login node?); {out / SCRIPT} is written" in \
        capsys.readouterr().err
