"""One dispatcher for every kernel: the Triton launcher in fastblocks.kernels.<family> and the
op in torch.ops.fastblocks_C share a kernel's name and positional arguments, and each op module
gives an eager reference with the same arguments for the `torch` backend."""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from .._backend import resolve


def run_kernel(family: str, name: str, device: torch.device, args: tuple,
               reference: Callable):
    """Run kernel `name` of op `family` on the backend selected for `device`."""
    backend = resolve(family, device, name)
    if backend == "triton":
        module = importlib.import_module(f"fastblocks.kernels.{family}")
        return getattr(module, name)(*args)
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.fastblocks_C, name)(*args)
    return reference(*args)
