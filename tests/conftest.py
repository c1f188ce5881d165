"""Test setup: Triton kernels run in the interpreter on CPU-only machines; `cuda` tests skip
without a GPU. TRITON_INTERPRET must be set before any @triton.jit function is created, i.e.
before fastblocks.kernels is imported, so it is set here at collection time.

Parallel runs (pytest-xdist; pyproject's addopts say `-n auto`): the whole suite, or a folder of
it, runs on one worker per core, each with one torch thread; a run that names test files or test
ids runs in this process, without the workers' start-up. `-n N` on the command line overrides."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: intra-op threads on top of that would only contend for the cores.
    # The environment variable reaches the subprocesses some tests start.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

import fastblocks  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_xdist_auto_num_workers(config):
    """`-n auto` from addopts: workers for the whole suite or a folder of it (None: xdist's own
    count, one per core), none (0: run here) for named files or test ids. Explicit `-n` on the
    command line is left to xdist."""
    explicit = any(a.startswith(("-n", "--numprocesses")) for a in config.invocation_params.args)
    if explicit or config.args_source != pytest.Config.ArgsSource.ARGS:
        return None
    paths = [a.split("::")[0] for a in config.args]
    return None if all(os.path.isdir(p) for p in paths) else 0


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
