"""Normalizing and checking convolution arguments (torchvision-style: ints or pairs, "same",
"valid"), shared by the conv op families. Every error names the argument."""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch


def pair(value, arg: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    vals = (value, value) if isinstance(value, int) else value
    try:
        vals = tuple(vals)
    except TypeError:
        raise TypeError(f"{arg} must be an int or a pair of ints, got {value!r}") from None
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise TypeError(f"{arg} must be an int or a pair of ints, got {value!r}")
    if min(vals) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{arg} must be {kind}, got {value!r}")
    return vals


class ConvGeometry(NamedTuple):
    """Resolved 2-d convolution geometry. `padding` is the top/left offset; the output size is
    explicit so asymmetric "same" padding (even kernels) needs nothing more."""
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_size: tuple[int, int]


def conv_geometry(in_size, kernel_size, stride, padding, dilation) -> ConvGeometry:
    """Resolve stride/padding/dilation for an input (H, W) and kernel (KH, KW), as F.conv2d."""
    stride = pair(stride, "stride", 1)
    dilation = pair(dilation, "dilation", 1)
    span = tuple(d * (k - 1) for d, k in zip(dilation, kernel_size))
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1 (as in torch.nn.functional.conv2d), "
                                 f"got stride={stride}")
            # PyTorch puts the odd extra row/column of padding at the bottom/right.
            pad = tuple(s // 2 for s in span)
            check_index_range(pad, span, stride, in_size)
            return ConvGeometry(stride, pad, dilation, tuple(in_size))
        else:
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    else:
        pad = pair(padding, "padding", 0)
    out = []
    for size, p, s, st, axis in zip(in_size, pad, span, stride, "HW"):
        padded = size + 2 * p
        if padded < s + 1:
            raise ValueError(
                f"input {axis} = {size} with padding {p} is smaller than the dilated kernel ({s + 1})"
            )
        out.append((padded - s - 1) // st + 1)
    check_index_range(pad, span, stride, out)
    return ConvGeometry(stride, pad, dilation, tuple(out))


# Every index a kernel forms, out * stride - pad + tap * dilation, fits int64 when each term is
# below 2^62; PyTorch's own convolutions refuse padding from 2^62 on. The kernels check the same
# (csrc/include/fastblocks/depthwise_args.h); here the error names the argument first.
INDEX_LIMIT = 1 << 62


def check_index_range(padding, span, stride, out_size) -> None:
    """ValueError naming the argument when a geometry's indices could pass int64 (see
    INDEX_LIMIT). `span`: dilation * (kernel size - 1) per axis."""
    if max(padding) >= INDEX_LIMIT:
        raise ValueError(f"padding must be below 2**62, got {padding}")
    if max(span) >= INDEX_LIMIT:
        raise ValueError(f"dilation * (kernel size - 1) must be below 2**62, got {span}")
    if max((o - 1) * st for o, st in zip(out_size, stride)) >= INDEX_LIMIT:
        raise ValueError(f"stride * (output size - 1) must be below 2**62, got stride {stride} "
                         f"for output size {tuple(out_size)}")


def _plain(value) -> bool:
    """An exact int, a str, or a tuple/list of exact ints: arguments whose cached geometry is
    the one conv_geometry would compute (1 == True == 1.0 as dict keys, but only ints pass)."""
    t = type(value)
    return t is int or t is str or ((t is tuple or t is list) and all(type(v) is int for v in value))


_cached_geometry = functools.lru_cache(maxsize=4096)(conv_geometry)


def conv_geometry_cached(in_size, kernel_size, stride, padding, dilation) -> ConvGeometry:
    """conv_geometry, memoized: a layer calls it with the same arguments on every step, and
    checking and resolving them in Python cost ~10 us, a fifth of a small batch-1 layer's time.
    Arguments of any other kind (and every error) go through conv_geometry itself."""
    # under torch.compile the cache is of no use (Dynamo traces the function it wraps, and
    # warns that it ignored the cache)
    if not torch.compiler.is_compiling() and _plain(stride) and _plain(padding) and _plain(dilation):
        as_key = lambda v: tuple(v) if type(v) is list else v  # noqa: E731
        return _cached_geometry(in_size, kernel_size, as_key(stride), as_key(padding), as_key(dilation))
    return conv_geometry(in_size, kernel_size, stride, padding, dilation)
