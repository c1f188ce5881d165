"""FractalNet (Larsson, Maire & Shakhnarovich, "FractalNet: Ultra-Deep Neural Networks without
Residuals", ICLR 2017, arXiv:1605.07648).

Fractal expansion rule: f_1(z) = conv(z), f_{C+1}(z) = join(f_C(f_C(z)), conv(z)); a block
with C columns has columns of 1, 2, 4, ..., 2^(C-1) conv units (conv3x3 -> BN -> ReLU), and a
join (the element-wise mean) wherever columns meet. The network stacks B blocks, each followed
by a 2x2 max pool (the paper's 20-layer CIFAR net: B = 5, C = 3, widths 64, 128, 256, 512,
512). By the expansion rule that net has 33.7M parameters (7 conv units a block); the paper's
table says 38.6M without giving the layout behind that figure, so ours is the rule's count.

Drop-path, in training only: per mini-batch, with probability ``global_ratio`` the whole
network uses one column chosen at random (global drop-path: every join passes only that
column); otherwise each input of each join is dropped with probability ``local_drop`` and at
least one survives (local drop-path). At test every path runs and every join is the mean.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["FractalNet", "FractalBlock"]


def _conv_unit(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class FractalBlock(nn.Module):
    """C columns, column c holding 2^c conv units. ``forward(x, column)`` with ``column`` None
    (every path; local drop-path in training) or an int (global drop-path: that column only).
    Shapes: (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin: int, cout: int, columns: int, local_drop: float, dropout: float) -> None:
        super().__init__()
        self.columns, self.local_drop = columns, local_drop
        self.depth = 2 ** (columns - 1)
        self.paths = nn.ModuleList(
            nn.ModuleList(_conv_unit(cin if k == 0 else cout, cout, dropout) for k in range(2 ** c))
            for c in range(columns))

    def _join(self, outs: list[Tensor]) -> Tensor:
        if self.training and len(outs) > 1 and self.local_drop > 0:
            keep = (torch.rand(len(outs)) >= self.local_drop).tolist()
            if not any(keep):
                keep[int(torch.randint(len(outs), ()))] = True
            outs = [o for o, k in zip(outs, keep) if k]
        return torch.stack(outs).mean(0)

    def forward(self, x: Tensor, column: int | None = None) -> Tensor:
        if column is not None:  # global drop-path: one column's chain
            for unit in self.paths[column]:
                x = unit(x)
            return x
        cols = [x] * self.columns
        done = [0] * self.columns  # conv units applied per column
        for d in range(1, self.depth + 1):
            ending = [c for c in range(self.columns) if d % (self.depth >> c) == 0]
            for c in ending:
                cols[c] = self.paths[c][done[c]](cols[c])
                done[c] += 1
            joined = self._join([cols[c] for c in ending])
            for c in ending:
                cols[c] = joined
        return cols[0]


class FractalNet(nn.Module):
    """Shapes: (N, 3, 32, 32) -> (N, num_classes) (input sides divisible by 2^blocks)."""

    def __init__(self, num_classes: int = 10, columns: int = 3,
                 widths=(64, 128, 256, 512, 512), dropouts=(0.0, 0.1, 0.2, 0.3, 0.4),
                 local_drop: float = 0.15, global_ratio: float = 0.5) -> None:
        super().__init__()
        if len(widths) != len(dropouts):
            raise ValueError("widths and dropouts must have one entry per block")
        self.columns, self.global_ratio = columns, global_ratio
        cin = 3
        self.blocks = nn.ModuleList()
        for w, p in zip(widths, dropouts):
            self.blocks.append(FractalBlock(cin, w, columns, local_drop, p))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        column = None
        # torch's generator (not `random`): torch.manual_seed makes runs repeatable
        if self.training and torch.rand(()).item() < self.global_ratio:
            column = int(torch.randint(self.columns, ()))
        for block in self.blocks:
            x = self.pool(block(x, column))
        return self.fc(x.flatten(2).mean(2))


@register_model("fractalnet", family="fractalnet", input_size=(3, 32, 32),
                paper="Larsson et al. 2017, FractalNet (arXiv:1605.07648)")
def fractalnet(num_classes: int = 10, columns: int = 3, local_drop: float = 0.15,
               global_ratio: float = 0.5) -> FractalNet:
    return FractalNet(num_classes, columns, local_drop=local_drop, global_ratio=global_ratio)
