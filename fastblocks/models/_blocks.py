"""Plain PyTorch blocks shared by the zoo's family files (no fastblocks module in here:
``create_model(fused=True)`` swaps fastblocks modules in with ``fastblocks.optimize``).

Named and laid out as torchvision's (``torchvision.ops.misc.Conv2dNormActivation``,
``SqueezeExcitation``, ``torchvision.models._utils._make_divisible``), so models built from
them load torchvision's checkpoints with their keys unchanged.
"""
from __future__ import annotations

from typing import Callable


from torch import Tensor, nn

__all__ = ["make_divisible", "ConvNormActivation", "SqueezeExcitation"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count ``v`` to the nearest multiple of ``divisor`` (at least
    ``min_value``, default ``divisor``), never below 90% of ``v``: the rule of the
    TensorFlow MobileNet/EfficientNet reference code, which every width multiplier uses."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """``Sequential(Conv2d, norm, activation)``: children "0", "1", "2" as in torchvision's
    Conv2dNormActivation (the norm and activation are left out when None).

    Shapes: (N, in_channels, H, W) -> (N, out_channels, OH, OW). ``padding=None`` gives
    ``(kernel_size - 1) // 2 * dilation`` ("same" for odd kernels at stride 1); the conv has a
    bias only when there is no norm layer (unless ``bias`` says otherwise).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, groups: int = 1,
                 norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
                 activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
                 dilation: int = 1, inplace: bool | None = True, bias: bool | None = None) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                             padding, dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer() if inplace is None else activation_layer(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., "Squeeze-and-Excitation Networks", 2018):
    ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1x1 convolutions ``fc1`` (C -> squeeze) and
    ``fc2`` (squeeze -> C), attribute names as torchvision's SqueezeExcitation.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x: Tensor) -> Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self._scale(x) * x


def init_weights(model: nn.Module) -> None:
    """torchvision's initialisation of its efficient models: conv kaiming-normal (fan_out),
    norms to (1, 0), linear normal(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


__all__ += ["init_weights"]
