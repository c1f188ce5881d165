"""Depthwise convolutions (nn.Conv2d with groups == in_channels, and subclasses that pad
like TensorFlow "SAME" in their own forward) -> ``fastblocks.nn.DepthwiseConv2d``, by swapping
the module's class in place (same parameters, same object; on NCHW CPU tensors it runs as
the nn.Conv2d it was: StandaloneDepthwiseConv2d says why). A depthwise conv followed by a
BatchNorm is fused by the conv_bn_act rule instead, which runs before this one."""
from __future__ import annotations

from torch import Tensor, nn

from ...nn.depthwise import DepthwiseConv2d
from .._classswap import swap_class
from .._padding import conv_kind, tf_same_pad
from .._rule import Keep, ModuleRule, Swap


class StandaloneDepthwiseConv2d(DepthwiseConv2d):
    """A depthwise conv with nothing fused into it: on a contiguous (NCHW) CPU tensor it runs
    as the nn.Conv2d it was (ATen's depthwise convolution), on others fastblocks' kernel.

    Why: without a BN or activation to fuse, fastblocks' NCHW CPU kernel is at ATen's speed per
    layer and costs more per call in a whole model. Zoo xception (its 34 separable convs' depthwise
    halves are standalone; NCHW, an eager BN is left), batch 1, 160x160, fp32, eval, 1 thread, the
    shared 2-core EPYC VM, thread CPU time, interleaved medians: per layer, each called alone,
    eager 6.13 ms vs ours 5.99 ms summed (1.02x; 0.85-1.17x by layer); the whole model 0.967x
    eager with them swapped, 1.003x with them running as nn.Conv2d (an identical eager copy:
    1.02x, the noise floor) (bench/cpu_probes/zoo_thread_time.py --control)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.is_contiguous():
            return nn.Conv2d.forward(self, x)
        return DepthwiseConv2d.forward(self, x)


class SamePaddingDepthwiseConv2d(StandaloneDepthwiseConv2d):
    """StandaloneDepthwiseConv2d after TensorFlow "SAME" padding computed from the input size
    (timm's Conv2dSame, i.e. "static/dynamic same" padding). Shapes as DepthwiseConv2d."""

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
        cls = StandaloneDepthwiseConv2d if kind == "plain" else SamePaddingDepthwiseConv2d
        try:
            swap_class(module, cls, activation=None)
        except TypeError:
            return Keep(f"{desc}: class cannot be swapped in place, kept eager")
        return Swap(module, "depthwise conv" + (" (TF same padding)" if kind == "tf_same" else ""))
