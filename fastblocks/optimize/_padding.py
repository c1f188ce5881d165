"""TensorFlow "SAME" padding computed from the input size on every call, as timm's
``Conv2dSame`` (``pad_same``) and Hugging Face's ``apply_tf_padding`` do, and a probe that
recognises an nn.Conv2d subclass whose forward does exactly that."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def tf_same_pad(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Zero-pad x (N, C, H, W) so that ``conv`` (padding 0) gives ceil(H / stride) rows:
    the smaller half of the padding at the top/left, as TensorFlow does."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    top, bottom = _same_pads(x.shape[-2], kh, sh, dh)
    left, right = _same_pads(x.shape[-1], kw, sw, dw)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return x


def tf_same_padding(x: Tensor, conv: nn.Conv2d) -> tuple[Tensor, tuple[int, int]]:
    """(x, (ph, pw)) to convolve with symmetric padding (ph, pw) for TensorFlow "SAME": x is
    returned as it is when the padding is symmetric (stride 1, odd kernel: no copy) and
    zero-padded at the bottom/right by the odd extra row/column otherwise."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    top, bottom = _same_pads(x.shape[-2], kh, sh, dh)
    left, right = _same_pads(x.shape[-1], kw, sw, dw)
    if bottom != top or right != left:
        x = F.pad(x, (0, right - left, 0, bottom - top))
    return x, (top, left)


def pads_tf_same(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` (an nn.Conv2d subclass with its own forward and zero padding) computes
    ``F.conv2d(tf_same_pad(x), weight, bias, stride, 0, dilation, groups)``: checked on two
    input sizes (an odd and an even one) against that reference."""
    if conv.padding_mode != "zeros" or conv.padding not in ((0, 0), "valid"):
        return False
    w = conv.weight
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for size in (max(conv.kernel_size) * 2 + 1, max(conv.kernel_size) * 2 + 2):
                x = torch.randn(1, conv.in_channels, size, size + 1).to(w.device, w.dtype)
                ref = F.conv2d(tf_same_pad(x, conv), w, conv.bias, conv.stride, 0, conv.dilation,
                               conv.groups)
                out = conv(x)
                if out.shape != ref.shape:
                    return False
                torch.testing.assert_close(out, ref)
    except Exception:  # noqa: BLE001 - not this kind of conv
        return False
    return True


def conv_kind(conv: nn.Module) -> str | None:
    """"plain" for an nn.Conv2d whose forward is nn.Conv2d's, "tf_same" for a subclass that
    pads like TensorFlow in its forward, None otherwise (not a 2-d conv we can replace)."""
    if not isinstance(conv, nn.Conv2d):
        return None
    t = type(conv)
    if t.forward is nn.Conv2d.forward and t._conv_forward is nn.Conv2d._conv_forward:
        return "plain"
    return "tf_same" if pads_tf_same(conv) else None
