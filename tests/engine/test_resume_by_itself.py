"""A run folder's checkpoint is continued without --resume where a cluster restarts the job (a torchrun
restart, train.auto_resume=true), after the same config check as --resume; and no resume, by itself or
not, continues on training data other than the checkpoint's unless told to, which is then reported."""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from fastssl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastssl.cli import main
from fastssl.config import ConfigError, load_config
from fastssl.loaders.datasets import DataError
from fastssl.engine.trainer import Trainer

TINY = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.max_steps=4", "train.log_every=1",
        "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=5", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=16", "model.projector_out=8", "augment.impl=reference",
        "method.loss_impl=reference"]


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture
def stopped(crash_after_first_checkpoint):
    """stopped(run, overrides): a run of `overrides` killed right after its checkpoint at step 2."""
    def run(folder, overrides=TINY) -> None:
        crash_after_first_checkpoint(Trainer(load_config(None, overrides + ["train.ckpt_every=2"]), folder))
    return run


def test_auto_resume_continues_the_checkpoint_and_ends_as_a_straight_run(tmp_path, capsys, stopped):
    stopped(tmp_path / "run")
    Trainer(load_config(None, TINY), tmp_path / "straight").fit()
    capsys.readouterr()
    args = TINY + ["train.auto_resume=true", "loader.workers=1"]
    assert main(["train", "--out", str(tmp_path / "run"), *_sets(args)]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {tmp_path / 'run' / 'last.pt'} at step 2 (train.auto_resume=true)" in err
    # a safe field changed (reported), and config.yaml now holds the config the run goes on with
    assert "loader.workers: 2 -> 1" in err and load_config(tmp_path / "run" / "config.yaml").loader.workers == 1
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()) and b["run"]["step"] == 4


def test_a_torchrun_restart_resumes_and_a_changed_model_is_refused_as_by_resume(tmp_path, capsys, monkeypatch,
                                                                               stopped):
    stopped(tmp_path / "run")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main(["train", "--out", str(tmp_path / "run"), *_sets(TINY + ["model.width=0.25"])]) == 2
    assert "model.width: 0.125 in the checkpoint, 0.25 now" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "run"), *_sets(TINY)]) == 0
    assert "at step 2 (torchrun restart 1)" in capsys.readouterr().err


def test_without_a_checkpoint_it_starts_and_without_a_folder_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")   # a restart before the first checkpoint: a fresh start
    assert Trainer(load_config(None, TINY + ["train.auto_resume=true"]), tmp_path / "new").fit().steps == 4
    with pytest.raises(ConfigError, match=r"train.auto_resume=true: needs the run folder it continues \(--out DIR\)"):
        Trainer(load_config(None, TINY + ["train.auto_resume=true"]))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    with pytest.raises(FileExistsError, match="already holds last.pt"):   # neither: a started run is never overwritten
        Trainer(load_config(None, TINY), tmp_path / "new")


def _folder(root, counts: dict[str, int]):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        (root / "test" / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            for split in ("train", "test"):
                image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root


def test_resuming_on_changed_data_is_an_error_naming_it_unless_accepted(tmp_path, capsys, stopped):
    data = _folder(tmp_path / "data", {"cat": 8, "dog": 8})
    folder = TINY + ["data.dataset=imagefolder", f"data.path={data}", "data.image_size=16", "loader.batch_size=8"]
    run = tmp_path / "run"
    stopped(run, folder)
    saved, step = load_checkpoint(run / "last.pt")["data"], load_checkpoint(run / "last.pt")["run"]["step"]
    assert saved["images"] == 16 and [c[:2] for c in saved["classes"]] == [["cat", 8], ["dog", 8]]
    (data / "train" / "dog" / "7.png").unlink()
    args = ["train", "--out", str(run), *_sets(folder + ["train.auto_resume=true"])]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"fastssl train: error: {run / 'last.pt'}: the training data changed since it was written "
                          "(16 images -> 15 images; ")
    assert "classes with another number of images: dog (8 -> 7)" in err and "--accept-data-change" in err
    assert load_checkpoint(run / "last.pt")["run"]["step"] == step       # nothing was written
    assert main(args + ["--accept-data-change"]) == 0
    assert ("resuming with a changed config: training data, accepted by --accept-data-change: 16 images -> 15 "
            "images") in capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["data"]["images"] == 15    # the data it now trains on


def test_a_checkpoint_without_a_fingerprint_resumes_with_a_note(tmp_path, capsys, stopped):
    run = tmp_path / "run"
    stopped(run)
    state = load_checkpoint(run / "last.pt")
    del state["data"]                       # as fastssl wrote checkpoints before it kept one
    save_checkpoint(run / "last.pt", state)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "the training data were not compared (the checkpoint holds no fingerprint of them" in capsys.readouterr().err


def _ranks_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    # rank 1's node holds another copy of the data: here, generated with one image fewer
    overrides = TINY + ([f"data.num_train={63 if rank else 64}"])
    try:
        Trainer(load_config(None, overrides), f"{out}/run")
        error = None
    except DataError as e:
        error = str(e)
    torch.save({"error": error}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_that_read_other_data_are_refused_on_every_rank(tmp_path, gloo_port):
    mp.spawn(_ranks_worker, args=(gloo_port, str(tmp_path)), nprocs=2)
    errors = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["error"] for r in range(2)]
    assert errors[0] == errors[1] and errors[0].startswith(
        "the training data differ between ranks: rank 1 of 2 read other data than rank 0 (64 images -> 63 images")
    assert not (tmp_path / "run" / "last.pt").exists()
