"""Convolution -> BatchNorm -> activation (the contract; kernels come with issue 17).

Two public functions, the seam between ``fastblocks.optimize`` (which swaps conv-BN-act chains
into models) and the conv-BN-act op family:

- ``conv_bias_act``: the inference chain once BN is folded into the conv's weight and bias:
  ``act(conv2d(x, weight, bias))`` in one pass over the output. Depthwise convolutions
  (groups == C_in, weight (C_in*m, 1, kh, kw)) go to ``depthwise_conv2d``'s fused kernel.
- ``conv_bn_act``: the whole chain with ``nn.BatchNorm2d``'s semantics: in training, batch
  statistics and running statistics updated in place; in eval, the running statistics.

This file holds the eager composition (exact semantics, autograd by PyTorch). The op family
(issue 17) replaces the bodies with registered, fused kernels without changing the signatures.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ._activation_codes import activation_code
from .activation import apply_activation
from .depthwise import depthwise_conv2d

__all__ = ["conv_bias_act", "conv_bn_act"]


def _is_depthwise(x: Tensor, weight: Tensor, groups: int) -> bool:
    return groups > 1 and weight.shape[1] == 1 and x.shape[-3] == groups


def conv_bias_act(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                  dilation=1, groups: int = 1, activation: str | None = None) -> Tensor:
    """``act(F.conv2d(x, weight, bias, stride, padding, dilation, groups))``.

    x: (N, C_in, H, W) or (C_in, H, W); weight: (C_out, C_in / groups, kh, kw); bias: (C_out,)
    or None; float16/bfloat16/float32/float64, NCHW or channels_last. activation: None/"none",
    "relu", "relu6", "hardswish", "hardsigmoid" or "silu" (ValueError otherwise).
    Returns (N, C_out, OH, OW).
    """
    activation_code(activation)
    if _is_depthwise(x, weight, groups):
        return depthwise_conv2d(x, weight, bias, stride, padding, dilation, activation)
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return y if activation in (None, "none") else apply_activation(y, activation)


def conv_bn_act(x: Tensor, weight: Tensor, conv_bias: Tensor | None, bn_weight: Tensor | None,
                bn_bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, *, training: bool, momentum: float = 0.1,
                eps: float = 1e-5, stride=1, padding=0, dilation=1, groups: int = 1,
                activation: str | None = "relu") -> Tensor:
    """``act(batch_norm(conv2d(x, weight, conv_bias, ...)))`` with nn.BatchNorm2d's semantics.

    training=True normalises with the batch's statistics (biased variance) and, when
    running_mean/running_var are given, updates them in place with ``momentum`` (the running
    variance with the unbiased batch variance), as ``F.batch_norm(training=True)`` does;
    ``momentum`` here is the factor itself (nn.BatchNorm2d turns momentum=None into
    1/num_batches_tracked before calling). training=False uses the running statistics.
    Shapes as ``conv_bias_act``; bn_*/running_*: (C_out,). Raises ValueError for a training
    batch with one value per channel (as nn.BatchNorm2d does).

    BatchNorm: Ioffe & Szegedy (2015).
    """
    activation_code(activation)
    y = F.conv2d(x, weight, conv_bias, stride, padding, dilation, groups)
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return y if activation in (None, "none") else apply_activation(y, activation)
