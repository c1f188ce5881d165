"""Drop-in activation modules: same constructor arguments as their torch.nn counterparts.

``inplace`` is accepted (and kept as an attribute) so models that pass it build unchanged,
but the result is always a new tensor and the input is left untouched: a model uses the
module's return value, and writing in place would force a copy of the input for backward.
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import ops


class _Activation(nn.Module):
    _fn = None
    torch_cls: type[nn.Module]

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape (N, C, H, W) typically; returns the same shape, dtype and strides."""
        return type(self)._fn(x)

    def extra_repr(self) -> str:
        # print exactly what the torch.nn module prints (Hardswish shows no `inplace`)
        return self.torch_cls.extra_repr(self)

    @classmethod
    def from_module(cls, m: nn.Module) -> "_Activation":
        """Build from the torch.nn module this class replaces."""
        if not isinstance(m, cls.torch_cls):
            raise TypeError(f"{cls.__name__}.from_module expects {cls.torch_cls.__name__}, got {type(m).__name__}")
        return cls(inplace=getattr(m, "inplace", False))


class Hardswish(_Activation):
    """Drop-in for torch.nn.Hardswish: ``x * relu6(x + 3) / 6``."""
    _fn = staticmethod(ops.hardswish)
    torch_cls = nn.Hardswish


class Hardsigmoid(_Activation):
    """Drop-in for torch.nn.Hardsigmoid: ``relu6(x + 3) / 6``."""
    _fn = staticmethod(ops.hardsigmoid)
    torch_cls = nn.Hardsigmoid


class ReLU6(_Activation):
    """Drop-in for torch.nn.ReLU6: ``min(max(x, 0), 6)``."""
    _fn = staticmethod(ops.relu6)
    torch_cls = nn.ReLU6


class SiLU(_Activation):
    """Drop-in for torch.nn.SiLU: ``x * sigmoid(x)``."""
    _fn = staticmethod(ops.silu)
    torch_cls = nn.SiLU
