"""ChannelShuffle and GroupedConv2d: drop-ins for torch.nn.ChannelShuffle and
nn.Conv2d(groups=g), backed by fastblocks.ops.channel_shuffle and grouped_conv2d."""
from __future__ import annotations

from torch import Tensor, nn

from .. import ops
from ._padding import padded_input
from ..ops._activation_codes import activation_code
from ..ops.shuffle import check_groups
from ._fold import fold_batchnorm


class ChannelShuffle(nn.ChannelShuffle):
    """Drop-in for ``torch.nn.ChannelShuffle(groups)`` (it *is* one, so code inspecting a model
    still recognises it). Input (N, C, *), C divisible by groups; output of the same shape,
    dtype and memory format."""

    def __init__(self, groups: int) -> None:
        if not isinstance(groups, int) or isinstance(groups, bool):
            raise TypeError(f"groups must be an int, got {type(groups).__name__}")
        if groups <= 0:
            raise ValueError(f"groups must be positive, got {groups}")
        super().__init__(groups)

    def forward(self, x: Tensor) -> Tensor:
        return ops.channel_shuffle(x, self.groups)

    @classmethod
    def from_module(cls, m: nn.ChannelShuffle) -> "ChannelShuffle":
        """Build from a torch.nn.ChannelShuffle."""
        if not isinstance(m, nn.ChannelShuffle):
            raise TypeError(f"ChannelShuffle.from_module expects nn.ChannelShuffle, got {type(m).__name__}")
        return cls(m.groups)


class GroupedConv2d(nn.Conv2d):
    """Grouped convolution, optionally followed by an activation and a channel shuffle, fused.

    Same constructor arguments, parameters (``weight`` (C_out, C_in / groups, kh, kw),
    ``bias``), initialisation and state_dict as ``nn.Conv2d(..., groups=groups)``, plus
    ``activation`` (None, "relu", "relu6", "hardswish", "hardsigmoid", "silu") and
    ``shuffle_groups`` (None or a positive int dividing out_channels). It *is* an nn.Conv2d.

    Shapes: input (N, C_in, H, W) or (C_in, H, W); output (N, C_out, OH, OW), channels in
    shuffled order when shuffle_groups is set (see fastblocks.ops.grouped_conv2d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, activation: str | None = None,
                 shuffle_groups: int | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        activation_code(activation)  # validate early
        if shuffle_groups is not None:
            check_groups(shuffle_groups, out_channels, "shuffle_groups", "out_channels")
        self.activation = None if activation == "none" else activation
        self.shuffle_groups = shuffle_groups

    def forward(self, x: Tensor) -> Tensor:
        x, padding = padded_input(self, x)
        return ops.grouped_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                                  self.groups, self.activation, self.shuffle_groups)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += f", activation={self.activation}" if self.activation else ""
        return s + (f", shuffle_groups={self.shuffle_groups}" if self.shuffle_groups else "")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None = None,
                  activation: str | None = None,
                  shuffle_groups: int | None = None) -> "GroupedConv2d":
        """Build from an ``nn.Conv2d`` (any groups), optionally with the eval-mode BatchNorm,
        activation and channel shuffle that follow it.

        Without ``bn`` the new module shares ``conv``'s parameters (training continues on the
        same tensors). With ``bn`` its statistics and affine are folded into new weight and
        bias: an inference-only fusion.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects an nn.Conv2d, got {type(conv).__name__}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, bias=conv.bias is not None or bn is not None,
                  padding_mode=conv.padding_mode, device="meta", activation=activation,
                  shuffle_groups=shuffle_groups)
        if bn is None:
            new.weight = conv.weight
            new.bias = conv.bias
        else:
            w, b = fold_batchnorm(conv.weight, conv.bias, bn)
            new.weight = nn.Parameter(w, requires_grad=conv.weight.requires_grad)
            new.bias = nn.Parameter(b, requires_grad=conv.weight.requires_grad)
        return new
