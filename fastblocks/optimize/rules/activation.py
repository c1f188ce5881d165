"""Standalone activation modules -> ``SwappedActivation`` (fastblocks' kernel on GPU tensors).

Matches torch.nn's Hardswish, Hardsigmoid, ReLU6, SiLU (and Hardtanh(0, 6)) and any
parameterless module that computes one of them (model libraries' own swish/h-swish classes),
recognised by behaviour (``_probe.probe_activation``). ReLU is left alone: eager's is already
one pass, and so is ours.

On CPU tensors the swapped module calls eager PyTorch: a standalone activation is memory
bound and ATen's vectorised kernels are as fast as ours at large sizes and faster at small
ones (measured, AMD EPYC 2-core VM, torch 2.13, 1 thread, median: 1x16x8x8 hardswish eager
1.6 us vs ours 5.1 us; 1x960x7x7 hardswish 7.9 vs 12.8 us; 8x96x56x56 hardswish 508 vs 671 us,
relu6 525 vs 586 us; 8x1280x7x7 silu 240 vs 234 us). A custom class computing
``x * torch.sigmoid(x)`` still gains on CPU: F.silu is one pass instead of two.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...nn._activation_names import UNKNOWN
from .._rule import Keep, ModuleRule, Swap

_EAGER = {"relu6": F.relu6, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
          "silu": F.silu, "relu": F.relu}


class SwappedActivation(nn.Module):
    """An activation: eager PyTorch on CPU tensors (faster there, see the module docstring),
    fastblocks' kernel (``ops.apply_activation``) on others. x: any shape; returns a new
    tensor of x's shape, dtype and strides."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        if activation not in _EAGER:
            raise ValueError(f"activation must be one of {sorted(_EAGER)}, got {activation!r}")
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu":
            return _EAGER[self.activation](x)
        return ops.apply_activation(x, self.activation)

    def extra_repr(self) -> str:
        return self.activation


class ActivationRule(ModuleRule):
    pattern = "activation"

    def apply(self, module: nn.Module, ctx):
        if module._modules or module._parameters or module._buffers:
            return None
        name = ctx.activation(module)
        if name is UNKNOWN or name is None:
            return None
        if name == "relu":
            return Keep("ReLU: eager's kernel is already one pass, kept eager")
        return Swap(SwappedActivation(name), f"activation {name} ({type(module).__name__})")
