"""Loads the compiled extension fastblocks._C and the Triton kernels, recording why not."""
from __future__ import annotations

import importlib
import os

import torch

_C = None
C_ERROR: str | None = None
try:
    _C = importlib.import_module("fastblocks._C")
except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
    C_ERROR = (
        f"fastblocks._C is not built or does not load ({type(exc).__name__}: {exc}); "
        "run `pip install -e . --no-build-isolation`"
    )

TRITON_ERROR: str | None = None
try:
    import triton  # noqa: F401
except Exception as exc:
    TRITON_ERROR = f"triton is not importable ({type(exc).__name__}: {exc}); `pip install triton`"


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (on CPU tensors, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def c_has_kernel(op: str, device_type: str) -> bool:
    """Whether fastblocks._C registered `op` (a name in torch.ops.fastblocks_C) for a device."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastblocks_C::{op}", key)
