"""Depthwise convolutions (nn.Conv2d with groups == in_channels, and subclasses that pad
like TensorFlow "SAME" in their own forward) -> ``fastblocks.nn.DepthwiseConv2d``, by swapping
the module's class in place (same parameters, same object). A depthwise conv followed by a
BatchNorm is fused by the conv_bn_act rule instead, which runs before this one."""
from __future__ import annotations

from torch import Tensor, nn

from ...nn.depthwise import DepthwiseConv2d
from .._classswap import swap_class
from .._padding import conv_kind, tf_same_pad
from .._rule import Keep, ModuleRule, Swap


class SamePaddingDepthwiseConv2d(DepthwiseConv2d):
    """DepthwiseConv2d after TensorFlow "SAME" padding computed from the input size (timm's
    Conv2dSame, i.e. "static/dynamic same" padding). Shapes as DepthwiseConv2d."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(tf_same_pad(x, self))


class DepthwiseRule(ModuleRule):
    pattern = "depthwise conv"

    def apply(self, module: nn.Module, ctx):
        if not isinstance(module, nn.Conv2d):
            return None
        k = "x".join(map(str, module.kernel_size))
        desc = (f"Conv2d groups={module.groups} {k} stride {module.stride[0]}"
                + (f" ({type(module).__name__})" if type(module) is not nn.Conv2d else ""))
        if module.groups != module.in_channels or module.groups == 1:
            return Keep(f"{desc}: no standalone kernel (only fused with a following BN), kept eager")
        kind = conv_kind(module)
        if kind is None:
            return Keep(f"{desc}: its own forward does something fastblocks does not reproduce, "
                        "kept eager")
        cls = DepthwiseConv2d if kind == "plain" else SamePaddingDepthwiseConv2d
        try:
            swap_class(module, cls, activation=None)
        except TypeError:
            return Keep(f"{desc}: class cannot be swapped in place, kept eager")
        return Swap(module, "depthwise conv" + (" (TF same padding)" if kind == "tf_same" else ""))
