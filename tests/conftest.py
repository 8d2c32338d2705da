import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # the exact-resume and golden tests compare bits; keep the thread count fixed
    torch.set_num_threads(2)
    yield
