"""Activation math as Triton device functions, shared by every kernel with an activation
epilogue. Codes as in fastblocks/ops/_activation_codes.py; formulas and the derivative
conventions at the kinks as in ATen (see csrc/include/fastblocks/common.h)."""
import triton
import triton.language as tl


@triton.jit
def _clamp_min0(x):
    """max(x, 0) as ATen computes it: NaN stays NaN (tl.maximum returns the other operand on
    the GPU) and -0.0 stays -0.0."""
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def _clamp06(x):
    """min(max(x, 0), 6) with NaN kept, as _clamp_min0."""
    return tl.where(x < 0.0, 0.0, tl.where(x > 6.0, 6.0, x))


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    """act(x), computed in x's (float32 or float64) type."""
    if ACT == 1:  # relu
        x = _clamp_min0(x)
    elif ACT == 2:  # relu6
        x = _clamp06(x)
    elif ACT == 3:  # hardswish
        x = x * _clamp06(x + 3.0) / 6.0
    elif ACT == 4:  # hardsigmoid
        x = _clamp06(x + 3.0) / 6.0
    elif ACT == 5:  # silu
        x = x / (1.0 + tl.exp(-x))
    return x


@triton.jit
def act_grad(g, x, ACT: tl.constexpr):
    """g * act'(x)."""
    if ACT == 1:
        g = tl.where(x <= 0.0, 0.0, g)  # NaN passes g, as ATen's threshold_backward
    elif ACT == 2:
        g = tl.where((x > 0.0) & (x < 6.0), g, 0.0)
    elif ACT == 3:
        g = tl.where(x <= -3.0, 0.0, tl.where(x < 3.0, g * (x / 3.0 + 0.5), g))
    elif ACT == 4:
        g = tl.where((x > -3.0) & (x < 3.0), g * (1.0 / 6.0), 0.0)
    elif ACT == 5:
        s = 1.0 / (1.0 + tl.exp(-x))
        g = g * s * (1.0 + x * (1.0 - s))
    return g
