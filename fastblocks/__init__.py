"""fastblocks: fast, exact building blocks of classic CNNs.

    import fastblocks
    y = fastblocks.ops.hardswish(x)            # functional op, any backend
    act = fastblocks.nn.Hardswish()            # drop-in for torch.nn.Hardswish
    with fastblocks.backend("triton"): ...     # pick a backend (default "auto")
"""
from . import _extension
from ._backend import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend,
    get_backend,
    set_backend,
    why_unavailable,
)
from . import ops, nn  # noqa: E402  (ops registers the torch.library ops on import)
from .models import create_model, list_models  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "available_backends", "backend", "get_backend",
    "set_backend", "why_unavailable", "ops", "nn", "create_model", "list_models", "__version__",
]

from .optimize import optimize, revert  # noqa: E402

__all__ += ["optimize", "revert"]
