"""Shake-Shake regularisation (Gastaldi, "Shake-Shake regularization", arXiv:1705.07485):
each residual block has two branches (ReLU -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN) mixed
as ``alpha * b1 + (1 - alpha) * b2`` with ``alpha ~ U(0, 1)`` drawn per image in the forward
pass and an independent ``beta ~ U(0, 1)`` used in its place in the backward pass
("Shake-Shake-Image"); at test both are 0.5. ``shake_shake_26_2x32d``: 26 layers (4 blocks per
stage), 2 branches, 32 base channels, for 32x32 images (CIFAR-10: 2.9M parameters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["ShakeShakeResNet", "shake_mix"]


class _ShakeMix(torch.autograd.Function):
    """alpha * a + (1 - alpha) * b forward, beta * g, (1 - beta) * g backward."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        ctx.save_for_backward(beta)
        return alpha * a + (1 - alpha) * b

    @staticmethod
    def backward(ctx, g: Tensor):
        (beta,) = ctx.saved_tensors
        return beta * g, (1 - beta) * g, None, None


def shake_mix(a: Tensor, b: Tensor, training: bool) -> Tensor:
    """Mix two branch outputs (N, C, H, W): random per image in training (forward alpha,
    backward beta, independent U(0, 1)), 0.5 each at test."""
    if not training:
        return 0.5 * (a + b)
    shape = (a.shape[0], 1, 1, 1)
    alpha = torch.rand(shape, device=a.device, dtype=a.dtype)
    beta = torch.rand(shape, device=a.device, dtype=a.dtype)
    return _ShakeMix.apply(a, b, alpha, beta)


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


class _Shortcut(nn.Module):
    """Gastaldi's projection shortcut: two 1x1 convs, one on the input and one on the input
    shifted by one pixel, each after a ``stride`` subsample, concatenated, then BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        a = self.conv1(x[..., ::self.stride, ::self.stride])
        shifted = F.pad(x[..., 1:, 1:], (0, 1, 0, 1))
        b = self.conv2(shifted[..., ::self.stride, ::self.stride])
        return self.bn(torch.cat([a, b], 1))


class ShakeBlock(nn.Module):
    """Shapes: (N, cin, H, W) -> (N, cout, H / stride, W / stride)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch1 = _branch(cin, cout, stride)
        self.branch2 = _branch(cin, cout, stride)
        self.shortcut = None if cin == cout and stride == 1 else _Shortcut(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return identity + shake_mix(self.branch1(x), self.branch2(x), self.training)


class ShakeShakeResNet(nn.Module):
    """Shapes: (N, 3, 32, 32) -> (N, num_classes)."""

    def __init__(self, depth: int = 26, base_width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, w in enumerate((base_width, base_width * 2, base_width * 4)):
            for j in range(n):
                blocks.append(ShakeBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.blocks(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("shake_shake_26_2x32d", family="shake_shake", input_size=(3, 32, 32),
                paper="Gastaldi 2017, Shake-Shake regularization (arXiv:1705.07485)")
def shake_shake_26_2x32d(num_classes: int = 10) -> ShakeShakeResNet:
    return ShakeShakeResNet(26, 32, num_classes)
