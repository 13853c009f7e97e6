"""Checkpoints: atomic writes, weights_only loads, proven bytes, and clear errors on truncated, damaged,
foreign or misfitting files."""
import random
import shutil
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from fastssl.checkpoint import (FORMAT, CheckpointError, capture_rng, load_checkpoint, load_state, restore_rng,
                                save_checkpoint)
from fastssl.cli import main
from fastssl.config import dump_yaml, load_config
from fastssl.engine.trainer import Trainer

TINY = ["data.num_train=128", "data.num_test=64", "loader.batch_size=32", "train.max_steps=1",
        "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=10", "knn.every_epochs=0",
        "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference"]


def _state() -> dict:
    """A checkpoint's kinds of tensors: a channels_last conv weight, bf16 and 0-dim ones, nested keys."""
    gen = torch.Generator().manual_seed(0)
    return {"step": 7, "knn_start": 0.125,
            "model": {"encoder.layer1.0.conv1.weight":
                      torch.randn(8, 8, 3, 3, generator=gen).to(memory_format=torch.channels_last),
                      "encoder.layer1.0.bn1.running_mean": torch.randn(8, generator=gen)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.randn(5, 7, generator=gen).bfloat16()}},
                          "param_groups": [{"lr": 0.1, "params": [0]}]},
            "run": {"sums": {"loss": torch.tensor(2.5)}}}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_round_trip_keeps_tensors_and_values(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt", required=("step", "model"))
    assert _equal(loaded, {"format": FORMAT, **state})   # dtypes and layouts too; the digests are not returned
    assert not (tmp_path / "last.pt.tmp").exists()


def _storage_entry(path, tensor: torch.Tensor) -> zipfile.ZipInfo:
    """The zip entry holding `tensor`'s bytes: the one whose CRC-32 (written by torch.save) is its storage's."""
    crc = zlib.crc32(torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage()).numpy())
    with zipfile.ZipFile(path) as archive:
        entries = [info for info in archive.infolist() if info.CRC == crc]
    assert len(entries) == 1
    return entries[0]


def _entry(path, name: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(path) as archive:
        return next(info for info in archive.infolist() if info.filename.endswith(name))


def _flip(path, info: zipfile.ZipInfo, count: int = 32) -> None:
    """Inverts `count` bytes in the middle of a zip entry's data (its local header: 30 bytes, name, extra)."""
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + max(0, info.file_size // 2 - count // 2)
    for i in range(start, start + min(count, info.file_size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("component, key", [("model", "encoder.layer1.0.conv1.weight"),
                                            ("optimizer", "state.0.momentum_buffer")])
def test_flipped_tensor_bytes_are_refused_naming_the_tensor(tmp_path, component, key):
    path, state = tmp_path / "last.pt", _state()
    save_checkpoint(path, state)
    tensor = state[component]["state"][0]["momentum_buffer"] if component == "optimizer" else state[component][key]
    _flip(path, _storage_entry(path, tensor))
    damaged = torch.load(path, weights_only=True)   # torch itself takes the damaged bytes
    assert not _equal(damaged[component], state[component])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"checkpoint {str(path)!r}: tensor '{component}: {key}' is damaged: its bytes do "
                              "not match the CRC-32 saved with it")


def test_flipped_pickle_bytes_are_refused_naming_data_pkl(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    _flip(path, _entry(path, "/data.pkl"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"checkpoint {str(path)!r}: zip entry 'archive/data.pkl' (the pickled structure: "
                              "names, shapes and values) is damaged: Bad CRC-32 for file 'archive/data.pkl'")


def test_a_checkpoint_without_digests_loads_and_its_zip_crcs_name_a_damaged_entry(tmp_path):
    """Checkpoints written before the digests (torch.save of the state and the format tag only)."""
    path, state = tmp_path / "old.pt", _state()
    with open(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    assert _equal(load_checkpoint(path), {"format": FORMAT, **state})
    entry = _storage_entry(path, state["model"]["encoder.layer1.0.conv1.weight"])
    _flip(path, entry)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"checkpoint {str(path)!r}: zip entry {entry.filename!r} (a tensor's bytes) is "
                              f"damaged: Bad CRC-32 for file {entry.filename!r}")


def test_a_state_that_does_not_fit_is_one_line_naming_the_key_and_shapes():
    layer, what = nn.Linear(2, 3), "component 'head' does not fit"
    with pytest.raises(CheckpointError) as err:
        load_state(layer, {"weight": torch.zeros(4, 2), "bias": torch.zeros(4)}, "x.pt", what)
    assert str(err.value) == f"checkpoint 'x.pt': {what}: weight is (4, 2) in the checkpoint, (3, 2) now"
    with pytest.raises(CheckpointError) as err:
        load_state(layer, {"weight": torch.zeros(3, 2)}, "x.pt", what)
    assert "\n" not in str(err.value) and 'Missing key(s) in state_dict: "bias"' in str(err.value)


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


# -- the CLI's readers of a checkpoint: train --resume, eval, export, features ---------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{method: RUN} of a one-step tiny run of contrastive and of BYOL, trained once for this module (on one
    thread: several on a shared 2-core machine make these tiny convolutions several times slower)."""
    root = tmp_path_factory.mktemp("trained")
    runs = {method: root / method for method in ("contrastive", "byol")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method, out in runs.items():
            Trainer(load_config(None, TINY + [f"method.name={method}"]), out).fit()
    finally:
        torch.set_num_threads(threads)
    return runs


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))


def _refused(argv: list[str], capsys) -> str:
    """The one line a refused CLI call printed (exit 2, no traceback)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _readers(run) -> dict[str, list[str]]:
    return {"eval": ["eval", "--ckpt", str(run / "last.pt"), "--protocol", "knn"],
            "export": ["export", str(run), "--out", str(run / "encoder.pt")],
            "features": ["features", str(run), "--out", str(run / "features")]}


def test_every_reader_refuses_a_damaged_checkpoint_in_one_line(trained, tmp_path, capsys):
    run = _copy(trained["contrastive"], tmp_path)
    ckpt = run / "last.pt"
    _flip(ckpt, _storage_entry(ckpt, torch.load(ckpt, weights_only=True)["model"]["encoder.stem.0.weight"]))
    expected = (f"checkpoint {str(ckpt)!r}: tensor 'model: encoder.stem.0.weight' is damaged: its bytes do not "
                "match the CRC-32 saved with it")
    for verb, argv in {"train": ["train", "--resume", str(run)], **_readers(run)}.items():
        assert _refused(argv, capsys) == f"fastssl {verb}: error: {expected}"
    assert not (run / "encoder.pt").exists() and not (run / "features").exists()


def test_readers_refuse_another_methods_checkpoint(trained, tmp_path, capsys):
    run = _copy(trained["contrastive"], tmp_path)
    shutil.copy(trained["byol"] / "last.pt", run / "last.pt")
    expected = (f"checkpoint {str(run / 'last.pt')!r}: was trained with method 'byol', but "
                f"{str(run / 'config.yaml')!r} names method 'contrastive' (a checkpoint copied from another run?)")
    for verb, argv in _readers(run).items():
        assert _refused(argv, capsys) == f"fastssl {verb}: error: {expected}"


def test_resuming_an_old_checkpoint_of_another_width_names_the_component_key_and_shapes(trained, tmp_path, capsys):
    """A checkpoint written before checkpoints held their config: nothing compares the widths before restore."""
    run = _copy(trained["contrastive"], tmp_path)
    state = load_checkpoint(run / "last.pt")
    del state["config"], state["format"]
    save_checkpoint(run / "last.pt", state)
    (run / "config.yaml").write_text(dump_yaml(load_config(run / "config.yaml", ["model.width=0.25"])))
    # width 0.125 -> a stem of 64 x 0.125 = 8 channels; 0.25 -> 16; the stem conv is the model's first key
    assert _refused(["train", "--resume", str(run)], capsys) == (
        f"fastssl train: error: checkpoint {str(run / 'last.pt')!r}: component 'model' does not fit this run: "
        "encoder.stem.0.weight is (8, 3, 3, 3) in the checkpoint, (16, 3, 3, 3) now")
