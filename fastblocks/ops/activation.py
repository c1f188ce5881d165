"""Activation family: hardswish, hardsigmoid, relu6, silu (and relu, used by epilogues).

One registered op pair serves every activation: ``fastblocks::activation(x, act)`` and its
backward ``fastblocks::activation_backward(grad, x, act)``, where ``act`` is a code from
``_activation_codes``. Both run on the selected backend (see fastblocks._backend) and keep the
input's strides (contiguous, channels_last or any other dense layout); a non-dense view is
copied once into the layout ``torch.empty_like`` gives it.

References: hardswish and hardsigmoid from Howard et al., "Searching for MobileNetV3" (2019);
SiLU from Elfwing et al. (2017) / Ramachandran et al., "Searching for Activation Functions".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import capture, restored
from ._dispatch import run_kernel
from ._fastpath import direct_autograd, direct_call_ok, plain_eager
from ._activation_codes import ACTIVATION_NAMES, activation_code
from ._layout import as_dense, like_layout
from ._validate import check_same, check_tensor

__all__ = ["hardswish", "hardsigmoid", "relu6", "silu", "relu", "apply_activation"]


# ---- eager reference (the `torch` backend, and what the tests compare against) --------------

def reference_forward(x: Tensor, act: int) -> Tensor:
    name = ACTIVATION_NAMES[act]
    if name == "none":
        return x.clone()
    return {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
            "hardsigmoid": F.hardsigmoid, "silu": F.silu}[name](x)


def reference_backward(grad: Tensor, x: Tensor, act: int) -> Tensor:
    aten = torch.ops.aten
    name = ACTIVATION_NAMES[act]
    if name == "none":
        return grad.clone()
    if name == "relu":
        return aten.threshold_backward(grad, x, 0)
    if name == "relu6":
        return aten.hardtanh_backward(grad, x, 0.0, 6.0)
    return {"hardswish": aten.hardswish_backward, "hardsigmoid": aten.hardsigmoid_backward,
            "silu": aten.silu_backward}[name](grad, x)


# ---- backend dispatch ------------------------------------------------------------------------

def run_forward(x: Tensor, act: int) -> Tensor:
    """act(x) for a dense x, on the selected backend; the result has x's strides."""
    return run_kernel("activation", "activation_forward", x.device, (x, act), reference_forward)


def run_backward(grad: Tensor, x: Tensor, act: int) -> Tensor:
    """grad * act'(x) for dense grad and x of equal strides; the result has x's strides."""
    return run_kernel("activation", "activation_backward", x.device, (grad, x, act),
                      reference_backward)


# ---- registered ops --------------------------------------------------------------------------

@torch.library.custom_op("fastblocks::activation", mutates_args=())
def _activation_op(x: Tensor, act: int) -> Tensor:
    # plain eager code calls run_forward without this op (see _fastpath)
    return run_forward(as_dense(x), act)


@_activation_op.register_fake
def _(x: Tensor, act: int) -> Tensor:
    return torch.empty_like(x)


def _check_backward_args(grad: Tensor, x: Tensor) -> None:
    check_same(x, "x", grad, "grad")
    if grad.shape != x.shape:
        raise ValueError(f"grad has shape {tuple(grad.shape)} but x has {tuple(x.shape)}")


def _backward_impl(grad: Tensor, x: Tensor, act: int) -> Tensor:
    _check_backward_args(grad, x)
    x = as_dense(x)
    return run_backward(like_layout(grad, x), x, act)


@torch.library.custom_op("fastblocks::activation_backward", mutates_args=())
def _activation_backward_op(grad: Tensor, x: Tensor, act: int) -> Tensor:
    return _backward_impl(grad, x, act)


@_activation_backward_op.register_fake
def _(grad: Tensor, x: Tensor, act: int) -> Tensor:
    _check_backward_args(grad, x)
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    x, act = inputs
    ctx.save_for_backward(x)
    ctx.act = act
    capture(ctx)


def _make_backward(backward_kernel):
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        with restored(ctx):
            return backward_kernel(grad, x, ctx.act), None
    return backward


torch.library.register_autograd("fastblocks::activation", _make_backward(_activation_backward_op),
                                setup_context=_setup_context)

# plain eager training: the same autograd functions around direct kernel calls (_fastpath)
_activation_direct = direct_autograd(
    "ActivationFunction", lambda x, act: run_forward(as_dense(x), act), _setup_context,
    _make_backward(_backward_impl))


# ---- public functions ------------------------------------------------------------------------

def apply_activation(x: Tensor, activation: str | None) -> Tensor:
    """Apply the named activation ("none", "relu", "relu6", "hardswish", "hardsigmoid", "silu").

    Shape: any; the output has ``x``'s shape, dtype and strides (for a dense ``x``).
    """
    check_tensor(x, "x")
    code = activation_code(activation)
    if direct_call_ok(x):
        return run_forward(as_dense(x), code)
    return (_activation_direct if plain_eager(x) else _activation_op)(x, code)


def hardswish(x: Tensor) -> Tensor:
    """``x * relu6(x + 3) / 6`` (MobileNetV3). x: any shape, float16/bfloat16/float32/float64."""
    return apply_activation(x, "hardswish")


def hardsigmoid(x: Tensor) -> Tensor:
    """``relu6(x + 3) / 6`` (MobileNetV3's SE gate). x: any shape, floating dtype."""
    return apply_activation(x, "hardsigmoid")


def relu6(x: Tensor) -> Tensor:
    """``min(max(x, 0), 6)`` (MobileNetV2). x: any shape, floating dtype."""
    return apply_activation(x, "relu6")


def silu(x: Tensor) -> Tensor:
    """``x * sigmoid(x)`` (swish; EfficientNet). x: any shape, floating dtype."""
    return apply_activation(x, "silu")


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``. x: any shape, floating dtype."""
    return apply_activation(x, "relu")


