import os

# One thread: the tests use small tensors, and two spinning OpenMP threads on a 2-core
# machine that is also running something else are many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (tight comparisons), then restore it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def torch_threads():
    """torch.set_num_threads for a test's body; the count it had is restored after the test."""
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)
