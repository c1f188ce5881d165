"""The op calls bench/triton_aot_check.py records Triton launches from: per family, a function
(dtype, channels_last) -> [(label, run)], each run one public op (or the internal entry its
module dispatches through) forward and, where the op has one, backward, on CPU tensors under
the ``triton`` backend. Chosen to reach every constexpr branch (each activation code, bias or
not, gate kinds, kernel sizes that unroll or loop, the int64 geometry of issue 12, ALIGN and
fp32 precision of conv_gemm) and the values Triton specializes an int on (== 1: a constexpr;
multiples of 16: divisibility): batch 1, 1x1 planes and outputs, padding and dilation 1,
channel counts that are and are not multiples of 16. The kernels are not executed while
recording, so sizes are those of real layers where the eager parts of an op stay cheap.
"""
from __future__ import annotations

import torch

import fastblocks.ops as ops

ACTS = (None, "relu", "relu6", "hardswish", "hardsigmoid", "silu")


def _x(shape, dtype, cl, grad=True):
    t = torch.randn(shape, dtype=torch.float32).to(dtype)
    if cl and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def _backward(y):
    y.backward(torch.randn_like(y))


def _fwd_bwd(fn):
    def run():
        _backward(fn())
    return run


def activation(dtype, cl):
    cases = []
    for shape in ((2, 16, 8, 8), (1, 3, 5, 7)):
        for act in ACTS[1:]:
            def run(s=shape, a=act):
                _backward(ops.apply_activation(_x(s, dtype, cl), a))
            cases.append((f"{act} {shape}", run))
    return cases


# (N, C, H, W, multiplier, kernel, stride, padding, dilation, bias, activation)
DEPTHWISE = [
    (2, 32, 14, 14, 1, (3, 3), 1, 1, 1, True, "relu6"),      # MobileNetV2 block
    (2, 16, 14, 14, 1, (3, 3), 2, 1, 1, False, "hardswish"),
    (1, 24, 13, 13, 1, (5, 5), 2, 2, 1, True, "silu"),       # EfficientNet 5x5 s2
    (2, 8, 9, 9, 2, (7, 7), 1, 3, 1, True, None),            # 49 taps (kh loop), m = 2
    (1, 16, 7, 7, 1, (7, 7), 1, 0, 1, False, "hardsigmoid"),  # 1x1 output
    (2, 16, 10, 10, 1, (3, 3), 1, 2, 2, False, "relu"),      # dilation 2
    (1, 8, 5, 9, 1, (1, 7), 1, (0, 3), 1, True, "silu"),
    (1, 4, 5, 5, 1, (3, 3), 1, 2**30, 2**30, False, None),   # coordinates past int32 (I64)
]


def depthwise(dtype, cl):
    cases = []
    for n, c, h, w, m, k, s, p, d, bias, act in DEPTHWISE:
        def run(n=n, c=c, h=h, w=w, m=m, k=k, s=s, p=p, d=d, bias=bias, act=act):
            x = _x((n, c, h, w), dtype, cl)
            wt = _x((c * m, 1, *k), dtype, False)
            b = _x((c * m,), dtype, False) if bias else None
            _backward(ops.depthwise_conv2d(x, wt, b, s, p, d, act))
        cases.append((f"{(n, c, h, w)} m={m} k={k} s={s} p={p} d={d} bias={bias} {act}", run))
    return cases


# (N, C, H, W, C_r, activation, gate, bias)
SQUEEZE_EXCITE = [
    (2, 16, 7, 7, 4, "relu", "sigmoid", True),
    (1, 64, 14, 14, 16, "silu", "sigmoid", True),    # batch 1: H*W split over programs
    (2, 24, 1, 1, 8, "hardswish", "hardsigmoid", False),  # H*W == 1
    (3, 40, 28, 28, 10, "relu", "hardsigmoid", True),
]


def squeeze_excite(dtype, cl):
    cases = []
    for n, c, h, w, cr, act, gate, bias in SQUEEZE_EXCITE:
        def run(n=n, c=c, h=h, w=w, cr=cr, act=act, gate=gate, bias=bias):
            x = _x((n, c, h, w), dtype, cl)
            w1, w2 = _x((cr, c), dtype, False), _x((c, cr), dtype, False)
            b1 = _x((cr,), dtype, False) if bias else None
            b2 = _x((c,), dtype, False) if bias else None
            _backward(ops.squeeze_excite(x, w1, b1, w2, b2, act, gate))
        cases.append((f"{(n, c, h, w)} C_r={cr} {act} {gate} bias={bias}", run))
    return cases


def shuffle(dtype, cl):
    from fastblocks.ops.shuffle import shuffle_epilogue
    cases = [
        ("channel_shuffle (2, 12, 5, 5) g3",
         _fwd_bwd(lambda: ops.channel_shuffle(_x((2, 12, 5, 5), dtype, cl), 3))),
        ("channel_shuffle (1, 116, 14, 14) g2",
         _fwd_bwd(lambda: ops.channel_shuffle(_x((1, 116, 14, 14), dtype, cl), 2))),
        ("concat_shuffle of a channel slice",
         _fwd_bwd(lambda: ops.concat_shuffle(_x((2, 8, 6, 6), dtype, cl),
                                             _x((2, 16, 6, 6), dtype, cl)[:, 8:], 2))),
    ]
    for code in range(len(ACTS)):
        def run(code=code):
            z = _x((2, 16, 7, 7), dtype, cl)
            bias = _x((16,), dtype, False)
            _backward(shuffle_epilogue(z, None, bias, 4, code))
        cases.append((f"shuffle_epilogue bias act={code}", run))
    cases.append(("shuffle_epilogue concat relu",
                  _fwd_bwd(lambda: shuffle_epilogue(_x((1, 8, 3, 3), dtype, cl),
                                                    _x((1, 8, 3, 3), dtype, cl), None, 2, 1))))
    return cases


# (N, C_in, H, W, C_out, groups, shuffle_groups, bias, activation): 1x1 inference
GROUPED = [
    (2, 24, 8, 8, 48, 3, 3, True, "relu"),         # ShuffleNet v1 g3 unit
    (1, 240, 14, 14, 240, 3, 3, False, None),      # K = J = 80
    (2, 12, 5, 5, 6, 2, None, True, "hardswish"),
    (1, 64, 7, 7, 128, 8, 8, True, "silu"),        # K = 8, J = 16
]


def grouped_conv(dtype, cl):
    cases = []
    for n, ci, h, w, co, g, sg, bias, act in GROUPED:
        def run(n=n, ci=ci, h=h, w=w, co=co, g=g, sg=sg, bias=bias, act=act):
            with torch.no_grad():
                x = _x((n, ci, h, w), dtype, cl, grad=False)
                wt = _x((co, ci // g, 1, 1), dtype, False, grad=False)
                b = _x((co,), dtype, False, grad=False) if bias else None
                ops.grouped_conv2d(x, wt, b, groups=g, activation=act, shuffle_groups=sg)
        cases.append((f"{(n, ci, h, w)}->{co} g={g} shuffle={sg} bias={bias} {act}", run))
    return cases


# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, activation)
CONV = [
    (2, 24, 8, 8, 144, 1, 1, 0, 1, 1, "relu6"),     # MobileNetV2 expansion (ALIGN > 1 in NHWC)
    (2, 64, 8, 8, 64, 3, 1, 1, 1, 1, "relu"),       # ResNet 3x3
    (1, 16, 9, 9, 24, 3, 2, 1, 1, 1, "hardswish"),  # stem-like, strided
    (2, 12, 5, 5, 12, 1, 1, 0, 1, 2, None),         # grouped, channels not a multiple of 8
    (1, 8, 9, 9, 16, 3, 1, 2, 2, 1, "silu"),        # dilation 2
    (2, 3, 11, 11, 8, 3, 2, 1, 1, 1, "hardsigmoid"),  # 3 input channels
    (1, 128, 7, 7, 256, 1, 1, 0, 1, 1, "relu"),     # wide: no config pruned (the prior runs)
]


@torch.no_grad()
def _bn(c, dtype):
    return (torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype),
            torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5)


def _fp32_precisions(dtype):
    """conv_gemm reads cuDNN's TF32 flag for fp32 (tl.dot tf32 or ieee): both, for fp32."""
    return ("tf32", "ieee") if dtype == torch.float32 else ("tf32",)


def _set_tf32(on: bool):
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = on


def conv_bn_act(dtype, cl):
    cases = []
    for n, ci, h, w, co, k, s, p, d, g, act in CONV:
        def train(n=n, ci=ci, h=h, w=w, co=co, k=k, s=s, p=p, d=d, g=g, act=act):
            x = _x((n, ci, h, w), dtype, cl)
            wt = _x((co, ci // g, k, k), dtype, False)
            bw, bb, rm, rv = _bn(co, dtype)
            _backward(ops.conv_bn_act(x, wt, None, bw.requires_grad_(), bb.requires_grad_(),
                                      rm, rv, training=True, stride=s, padding=p, dilation=d,
                                      groups=g, activation=act))

        def infer(n=n, ci=ci, h=h, w=w, co=co, k=k, s=s, p=p, d=d, g=g, act=act):
            for prec in _fp32_precisions(dtype):
                _set_tf32(prec == "tf32")
                try:
                    with torch.no_grad():
                        x = _x((n, ci, h, w), dtype, cl, grad=False)
                        wt = _x((co, ci // g, k, k), dtype, False, grad=False)
                        b = _x((co,), dtype, False, grad=False)
                        ops.conv_bias_act(x, wt, b, s, p, d, g, act)
                        ops.conv_bias_act(x, wt, None, s, p, d, g, act)
                finally:
                    _set_tf32(True)
        label = f"{(n, ci, h, w)}->{co} k={k} s={s} p={p} d={d} g={g} {act}"
        cases += [(f"train {label}", train), (f"eval {label}", infer)]
    return cases

