"""Activation names and the integer codes every kernel backend uses for them.

Same numbers as ``fastblocks::Act`` (csrc/include/fastblocks/common.h) and the Triton
helpers in kernels/_activation_math.py.
"""
from __future__ import annotations

ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3, "hardsigmoid": 4, "silu": 5}
ACTIVATION_NAMES = {code: name for name, code in ACTIVATION_CODES.items()}


def activation_code(activation: str | None, arg: str = "activation") -> int:
    """Code of an activation name (None means "none"); ValueError naming `arg` otherwise."""
    if activation is None:
        return 0
    if not isinstance(activation, str) or activation not in ACTIVATION_CODES:
        raise ValueError(f"{arg} must be one of {sorted(ACTIVATION_CODES)} or None, got {activation!r}")
    return ACTIVATION_CODES[activation]


def _inplace_fns():
    import torch
    import torch.nn.functional as F
    return {1: torch.relu_, 2: lambda y: F.hardtanh_(y, 0.0, 6.0),
            3: lambda y: F.hardswish(y, inplace=True), 4: lambda y: F.hardsigmoid(y, inplace=True),
            5: lambda y: F.silu(y, inplace=True)}


_INPLACE = _inplace_fns()


def activate_(y, code: int):
    """ATen's activation of code ``code`` applied in place to ``y`` (a fresh buffer nobody else
    holds), for the paths that leave the work to ATen or to inductor."""
    return y if code == 0 else _INPLACE[code](y)
