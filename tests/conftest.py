"""Test setup: Triton kernels run in the interpreter on CPU-only machines; `cuda` tests skip
without a GPU. TRITON_INTERPRET must be set before any @triton.jit function is created, i.e.
before fastblocks.kernels is imported, so it is set here at collection time."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastblocks  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    rows = [f"fastblocks backends: cpu tensors {fastblocks.available_backends('cpu')}"]
    if HAS_CUDA:
        rows.append(f"cuda tensors {fastblocks.available_backends('cuda')}")
    rows.append(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    return ", ".join(rows)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
