"""A tiny trained run shared by the end-to-end tests, and one intra-op thread for these tests: their matrices are tiny, and on a shared 2-core machine torch's
second thread waits on a busy core (an L-BFGS fit on 409 x 64 features: 0.3 s with one thread, 9 s
with two under load). Restored after each module."""
import pytest
import torch

from fastssl.config import load_config
from fastssl.engine.trainer import Trainer

# Two steps on the embedded shapes: seconds on 2 cores, deterministic, on the CPU.
TINY_RUN = ["data.num_train=512", "data.num_test=256", "loader.batch_size=32", "train.max_steps=2",
            "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=20", "knn.every_epochs=0",
            "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
            "method.loss_impl=reference"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """RUN/ of TINY_RUN, trained once per test module."""
    out = tmp_path_factory.mktemp("eval") / "run"
    Trainer(load_config(None, TINY_RUN), out).fit()
    return out
