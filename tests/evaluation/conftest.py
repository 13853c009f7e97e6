"""One intra-op thread for these tests: their matrices are tiny, and on a shared 2-core machine torch's
second thread waits on a busy core (an L-BFGS fit on 409 x 64 features: 0.3 s with one thread, 9 s
with two under load). Restored after each module."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
