"""Shared fixtures: offline HF, fixed seeds, tiny configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


# One intra-op thread: the tensors here are tiny, and two processes each spinning 2 OpenMP threads on a 2-core
# machine (a test plus a subprocess it launches) slow tiny forwards down by ~50x.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
