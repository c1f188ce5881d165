"""Folding an eval-mode BatchNorm into the preceding convolution's weight and bias.

Every BN fold in fastblocks goes through fold_batchnorm, which refuses a BatchNorm in training
mode: folding its running statistics would silently replace the batch statistics that
bn(conv(x)) uses in training (issue 12). PyTorch's own fuse_conv_bn_eval
(torch.nn.utils.fusion) refuses the same way."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm
                   ) -> tuple[Tensor, Tensor]:
    """(weight', bias') with conv(x, weight') + bias' == bn(conv(x, weight) + bias) in eval mode.

    weight: (C_out, ...); bias: (C_out,) or None. Computed in float64 and cast back, so the
    folded parameters carry no more rounding than one cast.

    Raises:
        TypeError: bn is not a BatchNorm module.
        ValueError: bn is in training mode (call bn.eval() first, or keep it unfolded: in
            training it normalises with batch statistics, which no fold can reproduce); bn
            tracks no running statistics; its features do not match the conv's outputs.
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.training:
        raise ValueError(
            "bn is in training mode: folding would replace its batch statistics by its running "
            "statistics and silently change the output. Fold only an eval-mode BatchNorm "
            "(bn.eval()), as torch.nn.utils.fusion.fuse_conv_bn_eval requires, or keep conv "
            "and bn separate for training")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): nothing to fold")
    if bn.num_features != weight.shape[0]:
        raise ValueError(f"bn has {bn.num_features} features but the conv has {weight.shape[0]} outputs")
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        if bias is not None:
            shift = shift + bias.double() * scale
        w = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    return w.to(weight.dtype), shift.to(weight.dtype)
