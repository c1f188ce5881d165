"""DepthwiseConv2d: a drop-in for ``nn.Conv2d(C, C*m, k, groups=C)`` running fastblocks'
depthwise kernel, with an optional fused activation."""
from __future__ import annotations

from torch import Tensor, nn

from .. import ops
from ._padding import padded_input
from ..ops._activation_codes import activation_code
from ._fold import fold_batchnorm


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise convolution (groups == in_channels), optionally followed by an activation.

    Same constructor arguments, parameters (``weight`` (C*m, 1, kh, kw), ``bias``),
    initialisation and state_dict as ``nn.Conv2d(in_channels, out_channels, kernel_size, ...,
    groups=in_channels)``; it *is* an ``nn.Conv2d``, so code inspecting a model still works.
    ``groups`` defaults to ``in_channels`` and must equal it.

    Shapes: input (N, C, H, W) or (C, H, W); output (N, C*m, OH, OW), m = out_channels / C.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int | None = None, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None,
                 activation: str | None = None) -> None:
        groups = in_channels if groups is None else groups
        if groups != in_channels:
            raise ValueError(f"DepthwiseConv2d needs groups == in_channels ({in_channels}), got {groups}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        activation_code(activation)  # validate early
        self.activation = None if activation == "none" else activation

    def forward(self, x: Tensor) -> Tensor:
        x, padding = padded_input(self, x)
        return ops.depthwise_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                                    self.activation)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation}" if self.activation else "")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None = None,
                  activation: str | None = None) -> "DepthwiseConv2d":
        """Build from an ``nn.Conv2d`` with groups == in_channels.

        Without ``bn`` the new module shares ``conv``'s parameters (training continues on the
        same tensors). With ``bn`` (an eval-mode BatchNorm2d following the conv) its statistics
        and affine are folded into new weight and bias: an inference-only fusion.

        Raises:
            TypeError: conv is not a depthwise nn.Conv2d, or bn not a BatchNorm.
            ValueError: bn is in training mode (``bn.eval()`` first: a fold cannot keep batch
                statistics), or has no running statistics (fold_batchnorm).
        """
        if not isinstance(conv, nn.Conv2d) or conv.groups != conv.in_channels:
            raise TypeError("from_conv expects an nn.Conv2d with groups == in_channels, got "
                            f"{type(conv).__name__}(groups={getattr(conv, 'groups', None)})")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, bias=conv.bias is not None or bn is not None,
                  padding_mode=conv.padding_mode, device="meta", activation=activation)
        if bn is None:
            new.weight = conv.weight
            new.bias = conv.bias
        else:
            w, b = fold_batchnorm(conv.weight, conv.bias, bn)
            new.weight = nn.Parameter(w, requires_grad=conv.weight.requires_grad)
            new.bias = nn.Parameter(b, requires_grad=conv.weight.requires_grad)
        return new
