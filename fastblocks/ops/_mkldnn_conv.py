"""CPU convolution with a fused bias + activation through oneDNN's post-ops, as PyTorch exposes
them to inductor's freezing passes (torch/_inductor/fx_passes/mkldnn_fusion.py):

- ``torch.ops.mkldnn._reorder_convolution_weight(w, padding, stride, dilation, groups,
  input_size)`` packs a weight into the blocked layout oneDNN picks for that input size;
- ``torch.ops.mkldnn._convolution_pointwise(x, w, b, padding, stride, dilation, groups, attr,
  scalars, algorithm)`` runs the convolution with the activation as a post-op of the same
  primitive, so the output is written once.

Packing is cached per weight tensor (by identity, dropped when the tensor dies) and invalidated
by its version counter, so a module that runs the same (folded) weight every call packs once,
and an optimizer step or load_state_dict is seen. A weight is packed on its second use: one
seen once (a BN fold recomputed on every call, as ConvBNAct does while autograd records) runs
on the plain weight instead of paying a reorder per call. Inference tensors have no version
counter; theirs is taken as fixed (they cannot change outside inference_mode).

Layout: channels_last only (as inductor lays activations out for it). A packed weight makes
oneDNN write a channels_last output whatever the input's layout; NCHW convolutions stay with
ATen (fastblocks/ops/conv_bn_act.py says why). Float64 (and float16/bfloat16 where the CPU lacks native support) are not served: the
caller falls back to ATen's convolution plus an in-place activation.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

# fastblocks activation code -> (oneDNN post-op name, scalars, algorithm), the names of
# torch/_inductor/fx_passes/mkldnn_fusion.py (relu6 is hardtanh(0, 6); silu is swish).
POST_OPS = {0: ("none", [], ""), 1: ("relu", [], ""), 2: ("hardtanh", [0.0, 6.0], ""),
            3: ("hardswish", [], ""), 4: ("hardsigmoid", [], ""), 5: ("swish", [], "")}

_MAX_SHAPES_PER_WEIGHT = 4   # input sizes remembered per weight (batch sizes seen in eval)
_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()


def native_dtypes() -> tuple[torch.dtype, ...]:
    global _DTYPES
    if _DTYPES is None:
        dtypes = [torch.float32]
        mk = torch.ops.mkldnn
        if hasattr(mk, "_is_mkldnn_bf16_supported") and mk._is_mkldnn_bf16_supported():
            dtypes.append(torch.bfloat16)
        if hasattr(mk, "_is_mkldnn_fp16_supported") and mk._is_mkldnn_fp16_supported():
            dtypes.append(torch.float16)
        _DTYPES = tuple(dtypes)
    return _DTYPES


_DTYPES: tuple[torch.dtype, ...] | None = None
_AVAILABLE = (torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
              and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


def can_serve(x: Tensor, weight: Tensor) -> bool:
    """Whether the fused oneDNN primitive runs this CPU convolution (dtype the CPU supports
    natively, dense 4-d tensors, torch.backends.mkldnn enabled)."""
    return (_AVAILABLE and x.device.type == "cpu" and torch.backends.mkldnn.enabled
            and x.dtype in native_dtypes() and weight.dtype == x.dtype and x.dim() == 4
            and x.shape[0] > 0)


def packed_weight(weight: Tensor, padding, stride, dilation, groups: int, input_size) -> Tensor:
    """The oneDNN-packed copy of `weight` for this geometry and input size, cached (from the
    weight's second use on; the plain weight before)."""
    key = (tuple(padding), tuple(stride), tuple(dilation), groups, tuple(input_size))
    version = -1 if weight.is_inference() else weight._version
    entry = _packed.get(weight)
    if entry is None or entry[0] != version:
        _packed[weight] = (version, {})
        return weight.contiguous()  # first use: plain weight (docstring)
    shapes = entry[1]
    packed = shapes.get(key)
    if packed is None:
        if len(shapes) >= _MAX_SHAPES_PER_WEIGHT:
            shapes.pop(next(iter(shapes)))
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight.detach().contiguous(), list(padding), list(stride), list(dilation),
                groups, list(input_size))
        shapes[key] = packed
    return packed


def conv_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
                   groups: int, act: int) -> Tensor:
    """act(conv2d(x, weight, bias)) in one oneDNN primitive; `can_serve` must hold. x
    channels_last-contiguous; the output is channels_last."""
    attr, scalars, algorithm = POST_OPS[act]
    w = packed_weight(weight, padding, stride, dilation, groups, x.shape)
    return torch.ops.mkldnn._convolution_pointwise(
        x, w, bias, list(padding), list(stride), list(dilation), groups, attr, scalars, algorithm)


def clear_cache() -> None:
    """Drop every packed weight (tests; memory)."""
    _packed.clear()
