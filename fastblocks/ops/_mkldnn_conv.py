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
ATen except those with a large weight that ATen itself runs through oneDNN, which run ATen's own
NCHW oneDNN primitive on a weight packed for it (``conv_nchw``: channels_last primitives, oneDNN's
brgconv kernels, accumulate less exactly than its NCHW jit kernels; fastblocks/ops/conv_bn_act.py,
_nchw_through_packed, has the numbers). Float64 (and float16/bfloat16 where the CPU lacks native support) are not served: the
caller falls back to ATen's convolution plus an in-place activation.

Exact long reductions (``exact_reductions_on``): oneDNN's channels_last kxk convolution
(brg_conv_fwd) sums all Cin*kh*kw products of an output in one accumulator, while its NCHW one
(jit:avx512_core on nChw16c, what eager NCHW runs) sums each 16-input-channel block's products
apart and then adds the blocks: identical results up to 16 input channels, less exact beyond
(``long_reduction``). Measured (bench/cpu_probes/kxk_summation_order.py, the 2-core EPYC VM,
AVX-512), max error vs float64 as a ratio to eager NCHW's, random fp32 ReLU inputs, 2x28x28, 64
outputs, geomean of 4 seeds, 1 / 2 threads: 3x3 with Cin 3, 8, 16: 1.00 / 1.00 (bit-identical);
Cin 32: 1.64 / 1.63; Cin 64: 3.10 / 2.38; 5x5 Cin 48: 2.41 / 2.56; 1x7 Cin 16: 1.00. A float32
emulation of the two orders on a 192->64 3x3 reproduces both: one running sum 3.2e-6, a sum per
16-channel block 5.8e-7; brgconv 3.5e-6, NCHW 5.7e-7.
While a model that asked for it runs (optimize/_cpu_layout.py decides per model), such a
convolution takes eager's NCHW convolution on a channels_last input instead (converted in and
out), so its sums are eager's.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
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
# the overload itself, not the packet: a packet call resolves the overload from the arguments
# on every call, 12-20 us more per call than .default (interleaved p10 of ~100 calls each, 1
# thread, the shared 2-core EPYC VM at load ~8: 64->384 1x1 at 14x14 132 vs 120 us, 160->960
# 1x1 at 7x7 190 vs 169 us, 256->256 3x3 at 14x14 2691 vs 2053 us)
_POINTWISE = torch.ops.mkldnn._convolution_pointwise.default if _AVAILABLE else None


_EXACT = threading.local()  # .roots: ids of the models running with exact long reductions
# input channels the NCHW kernel sums per block (docstring): nChw16c, AVX-512 (the EPYC VM);
# an AVX2 CPU's nChw8c kernel would sum 8, which this rule does not separate out
_NCHW_BLOCK = 16


def exact_reductions_on(root: int) -> None:
    """From now on in this thread (until ``exact_reductions_off(root)``), channels_last
    convolutions with a long reduction run eager's NCHW convolution (module docstring)."""
    roots = getattr(_EXACT, "roots", None)
    if roots is None:
        roots = _EXACT.roots = set()
    roots.add(root)


def exact_reductions_off(root: int) -> None:
    roots = getattr(_EXACT, "roots", None)
    if roots:
        roots.discard(root)


def exact_reductions() -> bool:
    """Whether this thread runs a model that asked for exact long reductions."""
    return bool(getattr(_EXACT, "roots", None))


def long_reduction(weight: Tensor) -> bool:
    """Whether a convolution with this weight (C_out, C_in/groups, kh, kw) sums more than one
    NCHW block of input channels over a kxk window: where channels_last oneDNN errs more than
    eager NCHW (module docstring). 1x1 kernels are left to oneDNN: over inception_v3's 40 1x1
    layers its channels_last kernel errs 0.72x eager's at 1 thread (eager runs ATen's GEMM
    there) and 1.31x at 2 threads (geomean), against 2.2-3.0x for its kxk layers
    (bench/cpu_probes/inception_v3_layer_errors.py)."""
    return weight.shape[-1] * weight.shape[-2] > 1 and weight.shape[1] > _NCHW_BLOCK


def _exact_nchw(x: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int,
                act: int) -> Tensor:
    """act(conv2d(x, weight, bias)) by eager's NCHW convolution for a channels_last x; the
    output channels_last, as ``conv_pointwise``'s."""
    from ._activation_codes import activate_
    y = F.conv2d(x.contiguous(), weight, bias, stride, padding, dilation, groups)
    return activate_(y, act).contiguous(memory_format=torch.channels_last)


def can_serve(x: Tensor, weight: Tensor) -> bool:
    """Whether the fused oneDNN primitive runs this CPU convolution (dtype the CPU supports
    natively, dense 4-d tensors, torch.backends.mkldnn enabled)."""
    return (_AVAILABLE and x.device.type == "cpu" and torch.backends.mkldnn.enabled
            and x.dtype in native_dtypes() and weight.dtype == x.dtype and x.dim() == 4
            and x.shape[0] > 0)


def _pack_blocked(weight: Tensor, padding, stride, dilation, groups: int, input_size) -> Tensor:
    """For channels_last activations: the packed weight _convolution_pointwise runs (inductor's)."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight.detach().contiguous(), list(padding), list(stride), list(dilation), groups,
        list(input_size))


def _pack_for_nchw(weight: Tensor, padding, stride, dilation, groups: int, input_size) -> Tensor:
    """For NCHW activations: a oneDNN tensor in the layout ATen's own NCHW oneDNN convolution
    reorders the weight into on every call (mkldnn_convolution's)."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.detach().contiguous().to_mkldnn(), list(padding), list(stride), list(dilation),
        groups, list(input_size))


def packed_weight(weight: Tensor, padding, stride, dilation, groups: int, input_size,
                  nchw: bool = False) -> Tensor:
    """The oneDNN-packed copy of `weight` for this geometry and input size, cached (from the
    weight's second use on; the plain weight before). ``nchw``: packed for ``conv_nchw``."""
    key = (nchw, tuple(padding), tuple(stride), tuple(dilation), groups, tuple(input_size))
    # data_ptr: `weight.data = t` swaps the storage under the same object and version
    version = (-1 if weight.is_inference() else weight._version, weight.data_ptr())
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
            pack = _pack_for_nchw if nchw else _pack_blocked
            packed = pack(weight, padding, stride, dilation, groups, input_size)
        shapes[key] = packed
    return packed


def conv_nchw(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
              groups: int, act: int) -> Tensor:
    """act(conv2d(x, weight, bias)) for a contiguous NCHW float32 x through ATen's own NCHW
    oneDNN convolution on a weight packed once (``packed_weight(..., nchw=True)``), the
    activation in place after it. Same primitive as eager's, so the same sums: the
    channels_last primitive of ``conv_pointwise`` accumulates less exactly (ops/conv_bn_act.py,
    _nchw_through_packed, has the numbers). Returns a new NCHW-contiguous tensor."""
    w = packed_weight(weight, padding, stride, dilation, groups, x.shape, nchw=True)
    return _run_nchw(x, w, bias, list(padding), list(stride), list(dilation), groups, act)


def _run_nchw(x, w, bias, padding, stride, dilation, groups, act):
    from ._activation_codes import activate_
    if not w.is_mkldnn:  # first use of the weight: ATen's convolution (the same primitive)
        y = torch.nn.functional.conv2d(x, w, bias, stride, padding, dilation, groups)
    else:
        y = torch.mkldnn_convolution(x.to_mkldnn(), w, bias, padding, stride, dilation,
                                     groups).to_dense()
    return activate_(y, act)


def conv_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
                   groups: int, act: int) -> Tensor:
    """act(conv2d(x, weight, bias)) in one oneDNN primitive; `can_serve` must hold. x
    channels_last-contiguous; the output is channels_last. Under ``exact_reductions`` a
    ``long_reduction`` runs eager's NCHW convolution instead (module docstring)."""
    if long_reduction(weight) and exact_reductions():
        return _exact_nchw(x, weight, bias, stride, padding, dilation, groups, act)
    attr, scalars, algorithm = POST_OPS[act]
    w = packed_weight(weight, padding, stride, dilation, groups, x.shape)
    return _POINTWISE(x, w, bias, list(padding), list(stride), list(dilation), groups, attr,
                      scalars, algorithm)


_BINARY = torch.ops.mkldnn._convolution_pointwise.binary if _AVAILABLE else None
# unary post-ops oneDNN fuses after the binary add (torch 2.13: relu or none; hardtanh,
# hardswish and swish raise "Unary Fusion behavior undefined")
_AFTER_ADD = {0: None, 1: "relu"}


def conv_add_pointwise(x: Tensor, other: Tensor, weight: Tensor, bias: Tensor | None, stride,
                       padding, dilation, groups: int, act: int) -> Tensor:
    """act(conv2d(x, weight, bias) + other) with the add (and relu) as post-ops of the oneDNN
    primitive, the other activations in place after it; `can_serve` must hold, x and other
    channels_last-contiguous, other of the output's shape and dtype. Returns a new
    channels_last tensor (other is read, not written). Under ``exact_reductions`` a
    ``long_reduction`` runs eager's NCHW convolution, then the add (module docstring)."""
    if long_reduction(weight) and exact_reductions():
        from ._activation_codes import activate_
        y = _exact_nchw(x, weight, bias, stride, padding, dilation, groups, 0)
        return activate_(y.add_(other), act)
    w = packed_weight(weight, padding, stride, dilation, groups, x.shape)
    unary = _AFTER_ADD.get(act)
    y = _BINARY(x, other, w, bias, list(padding), list(stride), list(dilation), groups, "add",
                None, unary, [], None)
    if act in _AFTER_ADD:
        return y
    from ._activation_codes import activate_
    return activate_(y, act)


def runner(weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int,
           act: int, input_size):
    """``lambda x: conv_pointwise(x, weight, bias, ...)`` for channels_last-contiguous inputs
    of ``input_size``, with the weight packed now and held by the closure (no cache lookup,
    no argument conversion per call): for a caller that owns `weight` and knows it unchanged
    (fastblocks.nn.ConvBNAct's eval plan). `can_serve` must hold. Why: the per-call Python
    around the primitive (the packed-weight cache lookup, argument lists) cost ~20 us, which
    made ATen's convolution + an in-place activation the faster choice for 1x1 convolutions
    under ~8 M multiply-adds; with the closure the primitive is as fast or faster (see
    ops/conv_bn_act.py). A ``long_reduction`` asks ``exact_reductions`` on every call (~0.1
    us) and runs eager's NCHW convolution while it holds."""
    attr, scalars, algorithm = POST_OPS[act]
    padding, stride, dilation = list(padding), list(stride), list(dilation)
    with torch.no_grad():
        packed = _pack_blocked(weight, padding, stride, dilation, groups, input_size)
    op = _POINTWISE

    def run(x: Tensor) -> Tensor:
        return op(x, packed, bias, padding, stride, dilation, groups, attr, scalars, algorithm)
    if not long_reduction(weight):
        return run

    def run_long(x: Tensor) -> Tensor:
        if getattr(_EXACT, "roots", None):
            return _exact_nchw(x, weight, bias, stride, padding, dilation, groups, act)
        return op(x, packed, bias, padding, stride, dilation, groups, attr, scalars, algorithm)
    return run_long


def runner_nchw(weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int,
                act: int, input_size):
    """``lambda x: conv_nchw(x, weight, bias, ...)`` for NCHW-contiguous inputs of
    ``input_size`` with the weight packed now and held by the closure (as ``runner``)."""
    padding, stride, dilation = list(padding), list(stride), list(dilation)
    with torch.no_grad():
        packed = _pack_for_nchw(weight, padding, stride, dilation, groups, input_size)
    return lambda x: _run_nchw(x, packed, bias, padding, stride, dilation, groups, act)


def clear_cache() -> None:
    """Drop every packed weight (tests; memory)."""
    _packed.clear()
