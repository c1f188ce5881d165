"""Backend selection: which implementation a fastblocks op runs.

Backends:
    ``triton``  Triton kernels (fastblocks.kernels); CUDA tensors, or CPU tensors under
                ``TRITON_INTERPRET=1`` (how the tests run them without a GPU).
    ``cuda``    the CUDA kernels of fastblocks._C; CUDA tensors.
    ``cpu``     the C++ kernels of fastblocks._C; CPU tensors.
    ``torch``   the eager PyTorch reference; any tensor.
    ``auto``    (default) per op: on CUDA tensors the fastest kernel backend by measurement
                (``AUTO_CUDA_ORDER``), on CPU tensors ``cpu``; ``torch`` only where no
                kernel backend is available, with a one-time warning.

Selection is per thread and per context (``contextvars``), so ``with fastblocks.backend(...)``
nests and is safe under threads. The autograd engine runs CUDA backward passes on its own
worker threads, which do not see the caller's context: each op captures the selection in its
``setup_context`` and re-enters it in backward (``capture`` / ``restored``).
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings

import torch

from . import _extension

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch")

# Kernel backends tried by `auto` on CUDA tensors, fastest first. Per op family; families not
# listed use DEFAULT_CUDA_ORDER. Update from bench/results/<device>/ when a GPU run shows a
# different winner (no GPU run has been made yet: triton first is the prior, not a measurement).
DEFAULT_CUDA_ORDER = ("triton", "cuda")
AUTO_CUDA_ORDER: dict[str, tuple[str, ...]] = {}

_selected: contextvars.ContextVar[str] = contextvars.ContextVar("fastblocks_backend", default="auto")
_warned: set[tuple[str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run this op on these tensors."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the backend for fastblocks ops in the current context."""
    _selected.set(_check_name(name))


def get_backend() -> str:
    """The backend selected in the current context (``"auto"`` by default)."""
    return _selected.get()


@contextlib.contextmanager
def backend(name: str):
    """``with fastblocks.backend("triton"): ...`` selects a backend for the block."""
    token = _selected.set(_check_name(name))
    try:
        yield
    finally:
        _selected.reset(token)


def capture(ctx) -> None:
    """Remember the current selection on an autograd ctx (call from setup_context)."""
    ctx.fastblocks_backend = _selected.get()


def restored(ctx):
    """Context manager re-entering the selection captured on `ctx` (use in backward)."""
    return backend(getattr(ctx, "fastblocks_backend", "auto"))


def why_unavailable(name: str, device_type: str = "cuda", op: str | None = None) -> str | None:
    """None if backend `name` can run (op `op` of fastblocks._C, if given) on `device_type`
    tensors, else the reason, naming what is missing."""
    _check_name(name)
    # Memoized: resolve() asks on every op call. The key holds everything the answer reads
    # that can change while the process runs (the interpreter switch, the load errors).
    key = (name, device_type, op, _extension.triton_interpret(), _extension.C_ERROR,
           _extension.TRITON_ERROR)
    if key not in _availability:
        _availability[key] = _why_unavailable(name, device_type, op)
    return _availability[key]


_availability: dict[tuple, str | None] = {}


def _why_unavailable(name: str, device_type: str, op: str | None) -> str | None:
    if name in ("torch", "auto"):
        return None
    if name == "triton":
        if _extension.TRITON_ERROR:
            return _extension.TRITON_ERROR
        if device_type == "cpu" and not _extension.triton_interpret():
            return "triton runs CPU tensors only in the interpreter: set TRITON_INTERPRET=1"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "triton needs a CUDA GPU (torch.cuda.is_available() is False)"
        return None
    if _extension.C_ERROR:
        return _extension.C_ERROR
    if name == "cpu" and device_type != "cpu":
        return f"the cpu backend runs CPU tensors, not {device_type} tensors"
    if name == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs CUDA tensors, not {device_type} tensors"
        if not torch.cuda.is_available():
            return "the cuda backend needs a CUDA GPU (torch.cuda.is_available() is False)"
    if op is not None and not _extension.c_has_kernel(op, device_type):
        return (
            f"fastblocks._C has no {device_type.upper()} kernel for {op}"
            + (" (built without CUDA: PyTorch or nvcc lacked CUDA at build time)" if name == "cuda" else "")
        )
    if op is None and name == "cuda" and not _extension.c_has_kernel("activation_forward", "cuda"):
        return "fastblocks._C was built without CUDA (PyTorch or nvcc lacked CUDA at build time)"
    return None


def available_backends(device_type: str | None = None) -> list[str]:
    """Kernel and reference backends usable here, for ``device_type`` ("cpu"/"cuda"; default:
    "cuda" if a GPU is present, else "cpu"). Always includes "torch" and "auto"."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return [b for b in BACKENDS if why_unavailable(b, device_type) is None]


def resolve(family: str, device: torch.device, c_op: str | None = None) -> str:
    """The concrete backend (triton/cuda/cpu/torch) for an op of `family` on `device`.

    An explicitly selected backend that cannot serve raises BackendUnavailableError; ``auto``
    falls back to ``torch`` with a one-time warning.
    """
    name = _selected.get()
    dev = device.type
    # Memoized: called for every kernel launch. The key holds everything the answer reads
    # that can change while the process runs (the interpreter switch only matters to triton
    # on CPU tensors; reading the environment costs microseconds).
    interpret = _extension.triton_interpret() if name == "triton" and dev == "cpu" else None
    key = (name, family, dev, c_op, AUTO_CUDA_ORDER.get(family), interpret, _extension.C_ERROR,
           _extension.TRITON_ERROR)
    resolved = _resolved.get(key)
    if resolved is None:
        resolved = _resolved[key] = _resolve(name, family, dev, c_op)
    return resolved


_resolved: dict[tuple, str] = {}


def _resolve(name: str, family: str, dev: str, c_op: str | None) -> str:
    if name != "auto":
        reason = why_unavailable(name, dev, c_op if name in ("cpu", "cuda") else None)
        if reason is not None:
            raise BackendUnavailableError(f"fastblocks backend {name!r} cannot run {family} here: {reason}")
        return name
    candidates = AUTO_CUDA_ORDER.get(family, DEFAULT_CUDA_ORDER) if dev == "cuda" else ("cpu",)
    for cand in candidates:
        if why_unavailable(cand, dev, c_op if cand in ("cpu", "cuda") else None) is None:
            return cand
    if (family, dev) not in _warned:
        _warned.add((family, dev))
        reasons = "; ".join(f"{c}: {why_unavailable(c, dev, c_op)}" for c in candidates)
        warnings.warn(
            f"fastblocks: no kernel backend for {family} on {dev} tensors ({reasons}); "
            "using the eager torch reference",
            RuntimeWarning,
            stacklevel=3,
        )
    return "torch"
