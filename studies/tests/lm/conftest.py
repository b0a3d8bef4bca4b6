"""The language-model tests run on one torch thread: the smoke runs' pinned numbers were measured so
(reductions, and so the numbers, change with the thread count), and nothing here needs more."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
