"""The tiny MLP of squeeze-and-excitation on the (N, C) channel means, in torch: shared by the
Triton launchers (kernels/squeeze_excite.py) and the `torch` backend's reference kernels
(fastblocks/ops/squeeze_excite.py). No Triton import, so the reference runs without Triton.

Everything runs in the accumulation type (float32; float64 for float64 inputs) through
torch's GEMM (cuBLAS on CUDA): at batch 256, C = 960, C_r = 240 the MLP is 2 x 59M
multiply-adds, a GEMM library's job, while the passes over x are ours. Activation
derivatives use ATen's own backward ops, so their conventions at the kinks are eager's. The
C++ twin is csrc/include/fastblocks/squeeze_excite_mlp.h (same steps, same order).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

GATE_CODES = {"sigmoid": 0, "hardsigmoid": 1}  # csrc: fastblocks::squeeze_excite::Gate

_aten = torch.ops.aten
# Activation codes as fastblocks/ops/_activation_codes.py (0 none, 1 relu, 2 relu6,
# 3 hardswish, 4 hardsigmoid, 5 silu).
_ACT_FORWARD = {1: F.relu, 2: F.relu6, 3: F.hardswish, 4: F.hardsigmoid, 5: F.silu}
_ACT_BACKWARD = {
    1: lambda g, z: _aten.threshold_backward(g, z, 0),
    2: lambda g, z: _aten.hardtanh_backward(g, z, 0.0, 6.0),
    3: _aten.hardswish_backward, 4: _aten.hardsigmoid_backward, 5: _aten.silu_backward,
}


class Mlp(NamedTuple):
    z1: Tensor  # fc1 output (N, C_r)
    h: Tensor   # act(z1)
    z2: Tensor  # fc2 output (N, C)
    s: Tensor   # gate(z2): the channel scales


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _linear(t: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    w = w.to(t.dtype)
    return F.linear(t, w, None if b is None else b.to(t.dtype))


def _no_autocast(t: Tensor):
    # the kernels' own math: plain eager calls reach it without the op's autocast handling
    return torch.autocast(t.device.type, enabled=False)


def mlp_forward(pooled: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                act: int, gate: int) -> Mlp:
    with _no_autocast(pooled):
        return _mlp_forward(pooled, w1, b1, w2, b2, act, gate)


def _mlp_forward(pooled, w1, b1, w2, b2, act, gate):
    z1 = _linear(pooled, w1, b1)
    h = _ACT_FORWARD[act](z1) if act else z1
    z2 = _linear(h, w2, b2)
    s = torch.sigmoid(z2) if gate == 0 else F.hardsigmoid(z2)
    return Mlp(z1, h, z2, s)


def mlp_backward(gs: Tensor, pooled: Tensor, m: Mlp, w1: Tensor, w2: Tensor, act: int,
                 gate: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """From gs = sum over H, W of grad * x (N, C, accumulation type): the gradient of the
    means (accumulation type) and of w1, b1, w2, b2 (in the weights' dtype)."""
    with _no_autocast(pooled):
        return _mlp_backward(gs, pooled, m, w1, w2, act, gate)


def _mlp_backward(gs, pooled, m, w1, w2, act, gate):
    acc = pooled.dtype
    gz2 = _aten.sigmoid_backward(gs, m.s) if gate == 0 else _aten.hardsigmoid_backward(gs, m.z2)
    gw2, gb2 = gz2.t() @ m.h, gz2.sum(0)
    gh = gz2 @ w2.to(acc)
    gz1 = _ACT_BACKWARD[act](gh, m.z1) if act else gh
    gw1, gb1 = gz1.t() @ pooled, gz1.sum(0)
    gp = gz1 @ w1.to(acc)
    wt = w1.dtype
    return gp, gw1.to(wt), gb1.to(wt), gw2.to(wt), gb2.to(wt)
