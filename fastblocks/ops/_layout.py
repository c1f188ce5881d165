"""Memory-layout helpers shared by the ops: what the kernels accept and return."""
from __future__ import annotations

import functools

import torch


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill a contiguous storage range in some order
    (contiguous, channels_last, any permutation of those). Elementwise kernels run over such
    a tensor's storage directly and give their output the same strides."""
    if t.is_contiguous():
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def as_dense(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if dense, else a dense copy laid out as torch.empty_like(t) lays it out (so a
    fake kernel returning empty_like(t) describes the real output)."""
    return t if is_dense(t) else torch.empty_like(t).copy_(t)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b (equal sizes) place every element at the same offset: equal strides in
    every dimension of more than one element, any strides when empty. Backward hands kernels
    such equivalents (a (N, C, 1, 1) gradient through a flatten or a transpose); treating them
    as different layouts made the cpu backend refuse plain training (issue 12)."""
    if a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()))


def like_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` (same shape as the dense `ref`) laid out as `ref`: itself when the layouts are
    equivalent (same_layout), else one copy (e.g. a contiguous or expanded gradient arriving
    for a channels_last activation)."""
    return t if same_layout(t, ref) else torch.empty_like(ref).copy_(t)


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether PyTorch suggests channels_last for a 4-d tensor: c10's is_channels_last_strides_2d
    (Tensor.suggest_memory_format), which also reads the strides of size-1 dimensions, so a
    (N, 1, H, W) or (N, C, 1, 1) tensor made by .to(memory_format=torch.channels_last) counts
    as channels_last and a plain contiguous one does not."""
    if t.dim() != 4:
        return False
    # The unambiguous layouts from the tensor's cached flags: plain NCHW is never channels_last,
    # and plain NHWC with no size-1 dimension always is. (The stride rule in Python took 4.8 us
    # per tensor against 0.15 us for the two is_contiguous calls: timeit on the shared 2-core
    # dev box, torch 2.13; hence also its cache.)
    if t.is_contiguous():
        if not t.is_contiguous(memory_format=torch.channels_last):
            return False
    elif t.is_contiguous(memory_format=torch.channels_last) and 1 not in t.shape:
        return True
    shape, strides = tuple(t.shape), t.stride()
    if torch.compiler.is_compiling():  # Dynamo traces through caches anyway, and warns of them
        return _strides_like_channels_last.__wrapped__(shape, strides)
    try:
        return _strides_like_channels_last(shape, strides)
    except TypeError:  # symbolic sizes (torch.compile) do not hash: no cache
        return _strides_like_channels_last.__wrapped__(shape, strides)


@functools.lru_cache(maxsize=1024)
def _strides_like_channels_last(shape, strides) -> bool:
    """c10's is_channels_last_strides_2d_s4, memoized: a layer asks about the same weight on
    every call, and a depthwise weight (C*m, 1, kh, kw) always has the size-1 dimension that
    makes is_contiguous ambiguous."""
    if strides[1] == 0:
        return False
    least = 0
    for d in (1, 3, 2, 0):
        if shape[d] == 0 or strides[d] < least:
            return False
        if d == 0 and least == strides[1]:
            return False
        least = strides[d] * (shape[d] if shape[d] > 1 else 1)
    return True


def conv_channels_last(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """PyTorch's rule for the memory format of a convolution (ATen's ConvUtils.h, on CPU and
    CUDA): channels_last when the input or the weight is (is_channels_last). A module converted
    with .to(memory_format=torch.channels_last) and fed a plain tensor gives channels_last."""
    return is_channels_last(x) or is_channels_last(weight)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def empty(shape, like: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """An uninitialized tensor with `like`'s dtype and device, contiguous in NCHW or NHWC."""
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=memory_format(channels_last))
