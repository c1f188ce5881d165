"""ops.inverted_residual (MobileNetV2's block, BN folded) against the eager composition."""
from __future__ import annotations

import pytest
import torch

import fastblocks
from fastblocks.ops import inverted_residual
from fastblocks.ops._activation_codes import activation_code
from fastblocks.ops.inverted_residual import reference_inverted_residual
from tolerances import assert_parity

_HAS_KERNEL = fastblocks._extension.C_ERROR is None and hasattr(
    torch.ops.fastblocks_C, "inverted_residual_forward")


def _block(n, cin, ch, cout, h, w, k, expand, seed=0, dtype=torch.float32, cl=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype)  # noqa: E731
    x = r(n, cin, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    c = ch if expand else cin
    return dict(x=x, w_expand=r(ch, cin, 1, 1, scale=0.3) if expand else None,
                b_expand=r(ch) if expand else None, w_dw=r(c, 1, k, k, scale=0.3), b_dw=r(c),
                w_project=r(cout, c, 1, 1, scale=0.3), b_project=r(cout))


def _reference(t, stride, padding, dilation, ea, da, residual, dtype=None):
    cast = (lambda v: v if v is None or dtype is None else v.to(dtype))  # noqa: E731
    return reference_inverted_residual(
        cast(t["x"]), cast(t["w_expand"]), cast(t["b_expand"]), cast(t["w_dw"]),
        cast(t["b_dw"]), cast(t["w_project"]), cast(t["b_project"]), [stride] * 2,
        [padding] * 2, [dilation] * 2, activation_code(ea), activation_code(da), residual)


# (N, C_in, C_h, C_out, H, W, k, stride, expand, residual, expand act, dw act, dilation):
# strides 1 and 2, k 3 and 5, with and without expansion and residual, odd sizes, every
# activation once, a batch of 0 and of 1, a C_h that is no multiple of 16 (the vector tail)
_CASES = [
    (2, 8, 48, 8, 9, 7, 3, 1, True, True, "relu6", "relu6", 1),
    (1, 8, 40, 16, 11, 13, 3, 2, True, False, "relu", "hardswish", 1),
    (2, 12, 12, 8, 13, 9, 5, 2, False, False, None, "silu", 1),
    (1, 6, 36, 6, 7, 8, 5, 1, True, True, "hardsigmoid", None, 1),
    (1, 8, 24, 8, 9, 9, 3, 1, True, True, "silu", "relu", 2),
    (0, 8, 16, 8, 5, 5, 3, 1, True, True, "relu6", "relu6", 1),
    # 19 output columns: register blocks of 7 at 0, 7, 12, the last two overlapping (the last
    # stores its sums over activated pixels), and SiLU applied over each block after its sums
    (1, 8, 24, 8, 4, 19, 3, 1, True, False, "relu6", "silu", 1),
]


@pytest.mark.skipif(not _HAS_KERNEL, reason="fastblocks._C without inverted_residual_forward")
@pytest.mark.parametrize("case", _CASES, ids=lambda c: f"n{c[0]}k{c[6]}s{c[7]}e{int(c[8])}r{int(c[9])}")
def test_parity_with_eager(case):
    n, cin, ch, cout, h, w, k, s, expand, res, ea, da, d = case
    t = _block(n, cin, ch, cout, h, w, k, expand)
    p = k // 2 * d
    out = inverted_residual(**t, stride=s, padding=p, dilation=d, expand_activation=ea,
                            dw_activation=da, residual=res)
    eager = _reference(t, s, p, d, ea, da, res)
    hi = _reference(t, s, p, d, ea, da, res, torch.float64)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_parity(out, eager, hi)


# How the kernel splits the work: maps of at most 14x14 as groups of whole images per GEMM (3
# images: one group of 3 on one thread; groups of 2 and 1 on two; 8 images of 14x14x384, whose
# group scratch caps a group at 3 images: groups of 3, 3, 2 on one thread, four of 2 on two; one
# image of 14x14 or 13x13 on two threads: split into two bands of rows, one a thread),
# larger ones as bands of rows
# whose depthwise halo moves to the next band (40x40 with 96 hidden channels: bands of 24 rows),
# an image split into segments when there are fewer images than threads; stride 1 and 2.
@pytest.mark.skipif(not _HAS_KERNEL, reason="fastblocks._C without inverted_residual_forward")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 8, 32, 8, 12, 10, 1), (8, 64, 384, 64, 14, 14, 1),
                                   (1, 8, 48, 8, 14, 14, 1), (1, 8, 48, 16, 13, 13, 2),
                                   (1, 8, 96, 8, 40, 40, 1), (2, 8, 96, 16, 41, 41, 2)],
                         ids=["groups", "groups-capped", "small-split", "small-split-s2", "bands",
                              "bands-s2"])
def test_groups_and_bands(shape, threads):
    n, cin, ch, cout, h, w, s = shape
    t = _block(n, cin, ch, cout, h, w, 3, True)
    res = s == 1 and cin == cout
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = inverted_residual(**t, stride=s, padding=1, residual=res)
    finally:
        torch.set_num_threads(old)
    assert_parity(out, _reference(t, s, 1, 1, "relu6", "relu6", res),
                  _reference(t, s, 1, 1, "relu6", "relu6", res, torch.float64))


@pytest.mark.skipif(not _HAS_KERNEL, reason="fastblocks._C without inverted_residual_forward")
def test_kernel_serves_float32_cpu(monkeypatch):
    """The parity above is the kernel's, not the eager fallback's."""
    calls = []
    real = torch.ops.fastblocks_C.inverted_residual_forward

    class Spy:
        def __call__(self, *args):
            calls.append(1)
            return real(*args)
    monkeypatch.setattr(torch.ops.fastblocks_C, "inverted_residual_forward", Spy(), raising=False)
    t = _block(1, 8, 16, 8, 6, 6, 3, True)
    inverted_residual(**t, stride=1, padding=1, residual=True)
    assert calls


def test_nchw_and_other_dtypes():
    """NCHW in, NCHW out; float64 (eager composition) equal to the reference."""
    t = _block(1, 8, 24, 8, 7, 9, 3, True, cl=False)
    out = inverted_residual(**t, stride=1, padding=1, residual=True)
    assert out.is_contiguous()
    assert_parity(out, _reference(t, 1, 1, 1, "relu6", "relu6", True),
                  _reference(t, 1, 1, 1, "relu6", "relu6", True, torch.float64))
    t64 = _block(1, 8, 24, 16, 7, 9, 3, True, dtype=torch.float64)
    torch.testing.assert_close(inverted_residual(**t64, stride=2, padding=1),
                               _reference(t64, 2, 1, 1, "relu6", "relu6", False))


def test_gradients_are_eagers():
    """With autograd recording, the eager composition runs (the op has no backward)."""
    t = _block(1, 4, 8, 4, 5, 5, 3, True, dtype=torch.float64)
    t["w_dw"].requires_grad_(True)
    inverted_residual(**t, stride=1, padding=1, residual=True).sum().backward()
    want = t["w_dw"].grad.clone()
    t["w_dw"].grad = None
    _reference(t, 1, 1, 1, "relu6", "relu6", True).sum().backward()
    torch.testing.assert_close(want, t["w_dw"].grad)


def test_compile_fullgraph():
    t = _block(2, 8, 16, 8, 6, 5, 3, True)
    fn = lambda x: inverted_residual(x, *list(t.values())[1:], stride=1, padding=1,  # noqa: E731
                                     residual=True)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="eager")(t["x"]),
                                   fn(t["x"]))
        torch.library.opcheck(torch.ops.fastblocks.inverted_residual.default,
                              (t["x"], *list(t.values())[1:], [1, 1], [1, 1], [1, 1], 2, 2, True),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("change, match", [
    (dict(x=torch.zeros(8, 5, 5)), r"x must be 4-d"),
    (dict(x=torch.zeros(1, 8, 5, 5, dtype=torch.int32)), r"x must have a floating dtype"),
    (dict(w_expand=torch.zeros(16, 7, 1, 1)), r"w_expand must have shape"),
    (dict(w_expand=None), r"b_expand must be None"),
    (dict(b_expand=torch.zeros(15)), r"b_expand must have shape"),
    (dict(w_dw=torch.zeros(16, 2, 3, 3)), r"w_dw must have shape"),
    (dict(b_dw=torch.zeros(16, dtype=torch.float64)), r"b_dw has dtype"),
    (dict(w_project=torch.zeros(8, 15, 1, 1)), r"w_project must have shape"),
    (dict(b_project=torch.zeros(7)), r"b_project must have shape"),
    (dict(residual=True, stride=2), r"residual=True needs an output of x's shape"),
    (dict(residual=1), r"residual must be a bool"),
    (dict(expand_activation="gelu"), r"expand_activation must be one of"),
    (dict(dw_activation="tanh"), r"dw_activation must be one of"),
    (dict(stride=0), r"stride"),
    (dict(padding="same"), r"padding must be an int"),
])
def test_bad_inputs_name_the_argument(change, match):
    t = _block(1, 8, 16, 8, 5, 5, 3, True)
    kw = dict(stride=1, padding=1, residual=False)
    for key, value in change.items():
        (t if key in t else kw)[key] = value
    with pytest.raises((TypeError, ValueError), match=match):
        inverted_residual(**t, **kw)
