"""Memory-layout helpers shared by the ops: what the kernels accept and return."""
from __future__ import annotations

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


def like_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` (same shape as the dense `ref`) with exactly `ref`'s strides; copies only when the
    strides differ (e.g. a contiguous gradient arriving for a channels_last activation)."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d tensor should be computed in NHWC, following PyTorch convolution: the
    input is channels_last-contiguous and not also plain contiguous (ambiguous cases such as
    C == 1 or H == W == 1 count as NCHW)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def empty(shape, like: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """An uninitialized tensor with `like`'s dtype and device, contiguous in NCHW or NHWC."""
    return torch.empty(shape, dtype=like.dtype, device=like.device,
                       memory_format=memory_format(channels_last))
