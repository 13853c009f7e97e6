"""Shared test set-up: Triton's interpreter on CPU, the `gpu` marker, the real-data location, and a
private folder for dataset indexes."""
import os
import socket
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton's interpreter runs the kernels on CPU tensors. It must be
# set before any kernel is imported; with a GPU the real kernels run and the `gpu` tests check them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Dataset indexes of the tests' folders go to a folder of this run, not the user's cache (index.py).
os.environ["FASTSSL_INDEX_DIR"] = tempfile.mkdtemp(prefix="fastssl-test-index-")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (bf16, large shapes, throughput)")
    config.addinivalue_line("markers", "slow: trains a model for minutes on the CPU")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cifar10_jpeg_root(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG images of ../shared/data, extracted once as an ImageFolder tree."""
    archives = [SHARED_DATA / "cifar10-jpg-train20k.tar.gz", SHARED_DATA / "cifar10-jpg-test.tar.gz"]
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        pytest.skip(f"real CIFAR-10 JPEG data not present ({', '.join(missing)}): ../shared is absent")
    root = tmp_path_factory.mktemp("cifar10_jpeg")
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    return root


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint is written."""


@pytest.fixture
def crash_after_first_checkpoint():
    """fit(trainer) until its first checkpoint is on disk, then 'crash' (the resume tests' interruption)."""
    def run(trainer) -> None:
        save = trainer.save

        def save_then_crash():
            save()
            raise _Killed
        trainer.save = save_then_crash
        with pytest.raises(_Killed):
            trainer.fit()
    return run


@pytest.fixture
def gloo_port(monkeypatch) -> int:
    """A free local port for a test's gloo process group, with the project root on the path its spawned
    workers inherit (they unpickle the test module's functions by name, under pytest's importlib mode)."""
    monkeypatch.syspath_prepend(str(ROOT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
