"""Checkpoints: atomic writes, weights_only loads, and clear errors on truncated or foreign files."""
import random

import numpy as np
import pytest
import torch

from fastssl.checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng, save_checkpoint


def test_round_trip_keeps_tensors_and_values(tmp_path):
    state = {"step": 7, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "knn_start": 0.125}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt", required=("step", "model"))
    assert loaded["step"] == 7 and loaded["knn_start"] == 0.125
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert not (tmp_path / "last.pt.tmp").exists()


def test_truncated_checkpoint_names_the_file_and_keeps_it(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.randn(64, 64)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt.*truncated or corrupt"):
        load_checkpoint(path)
    assert path.read_bytes() == data[: len(data) // 2]  # loading never deletes or rewrites it


def test_missing_foreign_and_incomplete_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fastssl-checkpoint-v1 file"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "part.pt", {"step": 1})
    with pytest.raises(CheckpointError, match="lacks model, optimizer"):
        load_checkpoint(tmp_path / "part.pt", required=("step", "model", "optimizer"))


class Payload:
    """Stands for any pickled object a malicious checkpoint could carry."""


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint carrying arbitrary objects is rejected, not executed."""
    torch.save({"format": "fastssl-checkpoint-v1", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")


def test_rng_states_survive_a_checkpoint(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng()})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
