"""Channel shuffle (ShuffleNet), and concatenation + shuffle in one pass.

``channel_shuffle(x, groups)`` has ``torch.nn.ChannelShuffle``'s semantics: with C = g * k
channels, output channel ``o = i * g + j`` is input channel ``j * k + i`` (view (N, g, k, ...),
transpose, flatten). Its backward is the inverse permutation, a shuffle with k groups.
``concat_shuffle(a, b, groups)`` is ``channel_shuffle(torch.cat([a, b], 1), groups)`` without
the concatenated tensor (ShuffleNet v2's unit ends with it); the gradient is split back.

Registered ops: ``fastblocks::channel_shuffle(a, b, bias, groups, act)``, which also serves as
the fused epilogue of ``grouped_conv2d`` (bias, activation, then the shuffled write), and its
backward ``fastblocks::channel_shuffle_backward``. In training only relu and relu6 are fused
(their derivative is read from the output); the others run as a separate activation op on the
shuffled output (an activation commutes with a channel permutation), as depthwise_conv2d does.

Layout: the output is channels_last when the inputs suggest it (PyTorch's
``suggest_memory_format``, as ATen's channel_shuffle and cat decide), else NCHW. An input that
is a channel slice of such a tensor (``x.chunk(2, dim=1)`` in ShuffleNet v2) is read in place;
anything else is copied once.

No ``register_autocast``: ATen treats channel_shuffle as dtype-preserving and torch.cat as
"promote" under autocast, so concat_shuffle promotes mixed dtypes (only under autocast) and
channel_shuffle keeps its input's dtype, as eager does.

ShuffleNet: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices" (CVPR 2018); Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design" (ECCV 2018).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._backend import _selected, capture, restored
from .._extension import _C
from ._activation_codes import ACTIVATION_NAMES, activation_code
from ._dispatch import run_kernel
from ._fastpath import direct_autograd, needs_grad, plain_eager
from ._layout import empty, memory_format
from ._validate import FLOATING, check_same, check_tensor
from .activation import (_activation_backward_op, _backward_impl as _activation_backward_impl,
                         apply_activation, reference_forward as _act_reference)

try:  # the stride test behind ATen's Tensor::suggest_memory_format
    from torch._prims_common import suggest_memory_format as _suggest
except ImportError:  # pragma: no cover - older torch
    _suggest = None

__all__ = ["channel_shuffle", "concat_shuffle", "reference_channel_shuffle",
           "reference_concat_shuffle"]

_RELU, _RELU6 = activation_code("relu"), activation_code("relu6")
# activations whose derivative the output gives exactly (see depthwise.py)
_FROM_OUTPUT = (0, _RELU, _RELU6)


# ---- eager reference ------------------------------------------------------------------------

def reference_channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """The eager composition: torch.nn.functional.channel_shuffle."""
    return torch.nn.functional.channel_shuffle(x, groups)


def reference_concat_shuffle(a: Tensor, b: Tensor, groups: int = 2) -> Tensor:
    """The eager composition: torch.cat then channel_shuffle."""
    return torch.nn.functional.channel_shuffle(torch.cat([a, b], 1), groups)


def _permute(x: Tensor, groups: int) -> Tensor:
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def _fresh(t: Tensor, channels_last: bool) -> Tensor:
    """A new tensor (custom ops must not return views of their inputs) in the format."""
    return torch.empty_like(t, memory_format=memory_format(channels_last)).copy_(t)


# The references take the kernels' arguments (same names, same order) for the `torch` backend.

def _reference_forward(a, b, bias, groups, act, channels_last):
    x = a if b is None else torch.cat([a, b], 1)
    if bias is not None:
        x = x + bias.view(1, -1, 1, 1)
    if act:
        x = _act_reference(x, act)
    return _fresh(_permute(x, groups), channels_last)


def _reference_backward(grad, y, split, groups, act, channels_last):
    aten = torch.ops.aten
    if act == _RELU:
        grad = aten.threshold_backward(grad, y, 0)
    elif act == _RELU6:
        grad = aten.hardtanh_backward(grad, y, 0.0, 6.0)
    g = _permute(grad, grad.shape[1] // groups)
    return _fresh(g[:, :split], channels_last), _fresh(g[:, split:], channels_last)


# ---- layout ----------------------------------------------------------------------------------

def _suggests_channels_last(t: Tensor) -> bool:
    # the two common cases first: the general stride test costs ~10 us of Python
    if t.dim() != 4 or t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    if _suggest is None:
        return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return _suggest(t) == torch.channels_last


def _reads_in_place(t: Tensor, channels_last: bool) -> bool:
    """Whether the kernels read `t` as it is: contiguous in the format, or a channel slice of
    such a tensor (mirrors outer_stride in csrc/cpu/shuffle.cpp)."""
    n, c, h, w = t.shape
    s = t.stride()
    if t.numel() == 0:  # never read
        return True
    if not channels_last:
        outer = s[0] if n > 1 else c * h * w
        return ((w <= 1 or s[3] == 1) and (h <= 1 or s[2] == w) and (c <= 1 or s[1] == h * w)
                and outer >= c * h * w)
    outer = s[3] if w > 1 else s[2] if h > 1 else s[0] if n > 1 else c
    return ((c <= 1 or s[1] == 1) and (w <= 1 or s[3] == outer) and (h <= 1 or s[2] == w * outer)
            and (n <= 1 or s[0] == h * w * outer) and outer >= c)


def _prepare(t: Tensor, channels_last: bool) -> Tensor:
    return t if _reads_in_place(t, channels_last) else t.contiguous(
        memory_format=memory_format(channels_last))


def _layout(a: Tensor, b: Tensor | None) -> bool:
    """channels_last when every input suggests it (ATen's rule for cat, and for
    channel_shuffle of one tensor)."""
    return _suggests_channels_last(a) and (b is None or _suggests_channels_last(b))


# ---- backend dispatch ------------------------------------------------------------------------

def _forward_impl(a: Tensor, b: Tensor | None, bias: Tensor | None, groups: int,
                  act: int) -> Tensor:
    cl = _layout(a, b)
    a = _prepare(a, cl)
    b = None if b is None else _prepare(b, cl)
    bias = None if bias is None else bias.contiguous()
    return run_kernel("shuffle", "channel_shuffle_forward", a.device, (a, b, bias, groups, act, cl),
                      _reference_forward)


def _backward_impl(grad: Tensor, y: Tensor | None, split: int, groups: int, act: int,
                   channels_last: bool) -> tuple[Tensor, Tensor]:
    fmt = memory_format(channels_last)
    grad = grad.contiguous(memory_format=fmt)
    y = None if y is None or not act else y.contiguous(memory_format=fmt)
    return run_kernel("shuffle", "channel_shuffle_backward", grad.device,
                      (grad, y, split, groups, act, channels_last), _reference_backward)


# ---- registered ops --------------------------------------------------------------------------

@torch.library.custom_op("fastblocks::channel_shuffle", mutates_args=())
def _shuffle_op(a: Tensor, b: Tensor | None, bias: Tensor | None, groups: int, act: int) -> Tensor:
    """act(cat(a, b) + bias) with its channels shuffled in `groups` groups; b, bias optional."""
    return _forward_impl(a, b, bias, groups, act)


@_shuffle_op.register_fake
def _(a, b, bias, groups, act):
    c = a.shape[1] + (0 if b is None else b.shape[1])
    return empty((a.shape[0], c, *a.shape[2:]), a, _layout(a, b))


@torch.library.custom_op("fastblocks::channel_shuffle_backward", mutates_args=())
def _shuffle_backward_op(grad: Tensor, y: Tensor | None, split: int, groups: int, act: int,
                         channels_last: bool) -> tuple[Tensor, Tensor]:
    """(grad_a, grad_b) of channel_shuffle from the gradient of its output (and the output
    itself for act relu/relu6); grad_b has 0 channels when there was no b."""
    return _backward_impl(grad, y, split, groups, act, channels_last)


@_shuffle_backward_op.register_fake
def _(grad, y, split, groups, act, channels_last):
    n, c, h, w = grad.shape
    return (empty((n, split, h, w), grad, channels_last),
            empty((n, c - split, h, w), grad, channels_last))


def _setup_context(ctx, inputs, output):
    a, b, bias, groups, act = inputs
    from_output = act in _FROM_OUTPUT
    # from_output: y gives act'; otherwise the inputs, to recompute the pre-activation
    ctx.save_for_backward(output if act and from_output else None,
                          None if from_output else a, None if from_output else b,
                          None if from_output else bias)
    ctx.args = (a.shape[1], groups, act, _layout(a, b), b is not None)
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[2]
    capture(ctx)


def _make_backward(forward_kernel, activation_backward_kernel, backward_kernel):
    """The autograd backward from the forward, activation-backward and shuffle-backward
    kernels: the registered ops (dispatcher path) or their bodies (plain eager path)."""
    def backward(ctx, grad):
        y, a, b, bias = ctx.saved_tensors
        split, groups, act, cl, has_b = ctx.args
        with restored(ctx):
            if act not in _FROM_OUTPUT:  # recompute the shuffled pre-activation
                z = forward_kernel(a, b, bias, groups, 0)
                grad = activation_backward_kernel(grad, z, act)
                act = 0
            ga, gb = backward_kernel(grad, y, split, groups, act, cl)
            gbias = None
            if ctx.bias_grad:
                acc = torch.float64 if ga.dtype == torch.float64 else torch.float32
                gbias = torch.cat([ga.sum((0, 2, 3), dtype=acc), gb.sum((0, 2, 3), dtype=acc)])
                gbias = gbias.to(ga.dtype)
        return ga, (gb if has_b else None), gbias, None, None
    return backward


torch.library.register_autograd(
    "fastblocks::channel_shuffle",
    _make_backward(_shuffle_op, _activation_backward_op, _shuffle_backward_op),
    setup_context=_setup_context)

# plain eager training: the same autograd functions around direct kernel calls (_fastpath)
_shuffle_direct = direct_autograd(
    "ChannelShuffleFunction", _forward_impl, _setup_context,
    _make_backward(_forward_impl, _activation_backward_impl, _backward_impl))


def shuffle_epilogue(a: Tensor, b: Tensor | None, bias: Tensor | None, groups: int,
                     act: int) -> Tensor:
    """act(cat(a, b) + bias[:, None, None]), channels shuffled in `groups` groups, through the
    path plain eager code or the compiler needs. Arguments are assumed checked. In training,
    an activation whose derivative the output does not give runs as a second op."""
    if bias is None and act in _FROM_OUTPUT:
        y = _fast_eager(a, b, groups, act)
        if y is not None:
            return y
    tensors = (a, b, bias)
    if not needs_grad(*tensors):
        return (_forward_impl if plain_eager(*tensors) else _shuffle_op)(a, b, bias, groups, act)
    fused = act if act in _FROM_OUTPUT else 0
    y = (_shuffle_direct if plain_eager(*tensors) else _shuffle_op)(a, b, bias, groups, fused)
    if fused != act:
        y = apply_activation(y, ACTIVATION_NAMES[act])
    return y


# ---- CPU policy -------------------------------------------------------------------------------

# Plain eager CPU calls under the auto and cpu backends first go to fastblocks._C.shuffle_eager
# (_fast_eager below; csrc/cpu/shuffle_python.cpp), which checks and calls in C++ and records
# training with a C++ autograd node, and applies the auto policy there: ATen for channels_last
# blocks fbgemm transposes fast (below) and for NCHW training from 2^18 elements, ours
# elsewhere. bench ops against eager (bench/results/cpu-amd-epyc-1t/shuffle-*, 2-core AMD EPYC
# VM, torch 2.13, 1 thread, fp32, load 4.4-6.0, providers alternating call by call): batch 1,
# where ours runs: channel_shuffle 1.33-2.12x NCHW inference (0.81-0.94x before, ATen running
# under a Python policy), 1.88-3.99x channels_last, 1.08-2.78x training; concat_shuffle
# 1.74-2.81x (0.57-1.21x before). Where ATen's kernel runs inside the entry the ratio is ATen's
# against itself plus our Python frame (~0.2 us): 0.89-1.12x at batch 1; paired medians of
# the entry alone, 1.01-1.03x. Batch-32 training ratios of identical code swing 0.4-2.6x
# between runs at this load. What the entry declines (other ranks, strides the kernels cannot
# read in place, tensor subclasses, modes, activations other than relu/relu6) takes the Python
# path, whose own measured policy follows.
#
# ATen's CPU channel_shuffle (F.channel_shuffle) is a native kernel for both layouts with its
# autograd in C++. Against it, on the 2-core AMD EPYC VM (torch 2.13, 1 thread, fp32, medians
# of 21-41 interleaved calls in random order, load 7-10; ShuffleNet v1/v2 tensors and g = 4, 16):
# - NCHW: both copy whole planes. ATen's call costs ~1.3 us less than a torch.ops call, so it
#   wins on batch-1 maps (ours 0.75-0.84x); at batch 32 ours ran 0.80-1.37x (six of eight
#   >= 1.0). In training its C++ autograd node saves our Python autograd.Function's ~15-30 us
#   (bench ops --mode fwd+bwd: ours 0.5-0.8x at batch 1, 0.7-0.9x at batch 32).
# - channels_last: ATen transposes each pixel's (groups, C / groups) channel block with
#   fbgemm's SIMD transpose, fast for 2 rows or columns or both sides multiples of 8 (g = 2:
#   ours 0.66-1.11x; g = 8 with 48 per group 0.64-0.91x; g = 16 with 8 per group 0.43-0.90x)
#   and slow otherwise (g = 3: ours 2.0-23x; g = 8 with 12 per group 1.1-1.6x; g = 4 with 16
#   per group 0.90-1.29x). The backward shuffles the gradient with C / groups groups, the same
#   transpose the other way round.
# - concat_shuffle (eager: torch.cat, then channel_shuffle: two passes) in inference: ours
#   0.90-1.48x at batch 1, 1.9-4.6x at batch 32 (ShuffleNet v2 1.0x, both layouts); in
#   training the Python autograd.Function costs what the saved pass gains on batch-1 maps
#   (ours 0.79-0.95x NCHW, 0.87-1.28x channels_last), and 1.05-8.5x at batch 32.
# So on that Python path, in plain eager code on CPU tensors under the `auto` backend, ATen runs
# where it measured faster: the shuffle alone except NCHW inference from _CPU_OWN_MIN_NUMEL elements (batch-1
# ShuffleNet maps hold 22k-91k, batch-32 ones 0.7-2.9M) and channels_last whose block fbgemm
# transposes slowly; concat + shuffle in training below _CPU_OWN_MIN_NUMEL. backend("cpu")
# always runs ours.
_CPU_OWN_MIN_NUMEL = 1 << 18


def _fbgemm_transposes_fast(rows: int, cols: int) -> bool:
    return rows == 2 or cols == 2 or (rows % 8 == 0 and cols % 8 == 0)


def aten_shuffle_on_cpu(x: Tensor, groups: int, training: bool) -> bool:
    """Whether ATen's channel_shuffle runs this plain-eager call of a 4-d CPU ``x`` under the
    auto backend (the measurements above)."""
    if _suggests_channels_last(x):
        return _fbgemm_transposes_fast(groups, x.shape[1] // groups)
    return training or x.numel() < _CPU_OWN_MIN_NUMEL


def aten_concat_shuffle_on_cpu(a: Tensor, b: Tensor, groups: int) -> bool:
    """Whether torch.cat, then ATen's channel_shuffle run this plain-eager training call of
    4-d CPU tensors under the auto backend (the measurements above)."""
    if a.numel() + b.numel() >= _CPU_OWN_MIN_NUMEL:
        return False
    return not _layout(a, b) or _fbgemm_transposes_fast(groups, (a.shape[1] + b.shape[1]) // groups)


# fastblocks._C.shuffle_eager(a, b, groups, act, own) (csrc/cpu/shuffle_python.cpp): None where
# it does not apply; Dynamo, which cannot trace a C function, never reaches it.
_shuffle_eager = getattr(_C, "shuffle_eager", None)
_dynamo_compiling = torch.compiler.is_dynamo_compiling


def _fast_eager(a, b, groups, act=0):
    """fastblocks._C.shuffle_eager under the auto and cpu backends, else None."""
    if _shuffle_eager is None or _dynamo_compiling():
        return None
    selected = _selected.get()
    if selected != "auto" and selected != "cpu":
        return None
    return _shuffle_eager(a, b, groups, act, selected == "cpu")


# The public functions test these first, as cheaply as they can (ATen's calls take 3-10 us on
# batch-1 maps; every Python call and tensor attribute costs 0.05-0.5 us): valid arguments,
# so that no error message of ours is lost; CPU tensors outside torch.compile (which keeps our
# op, and cannot trace the backend's context variable); the auto backend; the policy. Fake
# tensors, modes and transforms may take ATen's ops: they serve them all, as in eager code.

def _aten_serves(x, groups) -> bool:
    """channel_shuffle(x, groups) runs ATen's (~1.1 us for NCHW, ~1.4 us for channels_last)."""
    if not (x.__class__ is torch.Tensor and x.is_cpu and groups.__class__ is int and groups > 0
            and x.dim() == 4 and x.dtype in FLOATING):
        return False
    c = x.shape[1]
    if c % groups or torch.compiler.is_compiling() or _selected.get() != "auto":
        return False
    if x.is_contiguous():
        return (x.requires_grad and torch.is_grad_enabled()) or x.numel() < _CPU_OWN_MIN_NUMEL
    if x.is_contiguous(memory_format=torch.channels_last):
        return _fbgemm_transposes_fast(groups, c // groups)
    return aten_shuffle_on_cpu(x, groups, x.requires_grad and torch.is_grad_enabled())


def _aten_concat_serves(a, b, groups) -> bool:
    """concat_shuffle(a, b, groups) runs torch.cat, then ATen's channel_shuffle."""
    if not (a.__class__ is torch.Tensor and b.__class__ is torch.Tensor and a.is_cpu and b.is_cpu
            and groups.__class__ is int and groups > 0 and (a.requires_grad or b.requires_grad)
            and a.dim() == 4 and b.dim() == 4 and a.dtype in FLOATING and a.dtype == b.dtype):
        return False
    sa, sb = a.shape, b.shape
    if sa[0] != sb[0] or sa[2:] != sb[2:] or (sa[1] + sb[1]) % groups:
        return False
    return (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and _selected.get() == "auto" and aten_concat_shuffle_on_cpu(a, b, groups))


# ---- argument checks ----------------------------------------------------------------------------

def check_groups(groups, channels: int, arg: str = "groups", what: str = "x") -> None:
    """`groups` is a positive int dividing `channels`: TypeError/ValueError naming `arg`."""
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"{arg} must be an int, got {type(groups).__name__}")
    if groups <= 0:
        raise ValueError(f"{arg} must be positive, got {groups}")
    if channels % groups:
        raise ValueError(f"{arg}={groups} must divide the channels of {what} ({channels})")


# ---- public functions --------------------------------------------------------------------------

def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Shuffle the channels of ``x`` in ``groups`` groups, as ``torch.nn.ChannelShuffle``.

    With C = groups * k, output channel ``i * groups + j`` is input channel ``j * k + i``.

    Args:
        x: (N, C, *) with at least one trailing dim, typically (N, C, H, W); float16,
            bfloat16, float32 or float64; NCHW or channels_last (the output keeps it).
        groups: positive int dividing C.

    Returns:
        A new tensor of x's shape and dtype.

    On CPU tensors in plain eager code under the ``auto`` backend this runs ATen's own
    channel_shuffle where that measured faster (see the CPU policy in this module).

    Raises:
        TypeError: x is not a floating tensor, or groups is not an int.
        ValueError: x has fewer than 3 dims, groups <= 0, or groups does not divide C.
    """
    # _fast_eager inlined: where ATen's kernel runs, every Python call shows (~0.1 us of 3-30)
    if _shuffle_eager is not None and not _dynamo_compiling():
        selected = _selected.get()
        if selected == "auto" or selected == "cpu":
            y = _shuffle_eager(x, None, groups, 0, selected == "cpu")
            if y is not None:
                return y
    if _aten_serves(x, groups):
        return torch.channel_shuffle(x, groups)
    check_tensor(x, "x")
    if x.dim() < 3:
        raise ValueError(f"x must have at least 3 dims (N, C, *), got shape {tuple(x.shape)}")
    check_groups(groups, x.shape[1])
    shape = x.shape
    if x.dim() != 4:
        x = x.reshape(shape[0], shape[1], -1, 1)
    elif plain_eager(x):
        if not needs_grad(x):
            # plain eager inference, straight to the kernel: each Python call saved is ~1 us,
            # and a batch-1 shuffle of a 7x7 map takes ~10 us in all (2-core dev VM)
            cl = _suggests_channels_last(x)
            return run_kernel("shuffle", "channel_shuffle_forward", x.device,
                              (_prepare(x, cl), None, None, groups, 0, cl), _reference_forward)
    y = shuffle_epilogue(x, None, None, groups, 0)
    return y if len(shape) == 4 else y.reshape(shape)


def concat_shuffle(a: Tensor, b: Tensor, groups: int = 2) -> Tensor:
    """``channel_shuffle(torch.cat([a, b], dim=1), groups)`` in one pass (ShuffleNet v2's unit).

    Args:
        a: (N, Ca, H, W); b: (N, Cb, H, W), same device; same dtype (under autocast mixed
            dtypes are promoted, as torch.cat does). Either may be a channel slice of a larger
            tensor (``x.chunk(2, dim=1)``), read in place.
        groups: positive int dividing Ca + Cb (ShuffleNet v2 uses 2).

    Returns:
        (N, Ca + Cb, H, W), channels_last if both inputs are, else NCHW. Gradients flow back
        to a and b. (Where the C++ entry of plain eager CPU code declines, training under
        the ``auto`` backend runs torch.cat and ATen's channel_shuffle on small maps:
        ``aten_concat_shuffle_on_cpu``.)

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes outside autocast, or a
            non-int groups.
        ValueError: a or b not 4-d, shapes that disagree outside dim 1, devices that differ,
            groups <= 0 or not dividing Ca + Cb.
    """
    y = _fast_eager(a, b, groups)
    if y is not None:
        return y
    if _aten_concat_serves(a, b, groups):
        return torch.channel_shuffle(torch.cat([a, b], 1), groups)
    check_tensor(a, "a")
    check_tensor(b, "b")
    if a.dtype != b.dtype and torch.is_autocast_enabled(a.device.type):
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    check_same(a, "a", b, "b")
    for t, arg in ((a, "a"), (b, "b")):
        if t.dim() != 4:
            raise ValueError(f"{arg} must be 4-d (N, C, H, W), got shape {tuple(t.shape)}")
    if (b.shape[0], *b.shape[2:]) != (a.shape[0], *a.shape[2:]):
        raise ValueError(f"b has shape {tuple(b.shape)} but a has {tuple(a.shape)}; they must "
                         "agree in every dim but 1")
    check_groups(groups, a.shape[1] + b.shape[1], what="cat(a, b)")
    return shuffle_epilogue(a, b, None, groups, 0)
