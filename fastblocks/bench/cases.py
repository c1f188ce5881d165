"""Benchmark cases: what an op is timed on, and how its bytes and FLOPs are counted.

A *case* is one op on one shape, dtype, layout (``nchw`` / ``channels_last``) and mode
(``fwd`` / ``fwd+bwd``). An ``OpBench`` (one per op, in ``REGISTRY``) builds cases: the inputs
(fresh random tensors per seed, never zeros), the eager reference (the op module's own
reference function), the fastblocks function, and the minimal bytes and FLOPs.

Bytes counted (each tensor read once, written once; ``element_size()`` of the case's dtype):
  activation  fwd: read x, write y                              = 2 * numel
              fwd+bwd: fwd + read grad_y and x, write grad_x    = 5 * numel
  depthwise   fwd: read x, weight, bias; write y
              fwd+bwd: fwd + read grad_y, x, weight; write grad_x, grad_weight, grad_bias
FLOPs (depthwise only; a multiply-add is 2): fwd 2*N*C_out*OH*OW*KH*KW; fwd+bwd 3x that (the
input gradient and the weight gradient each cost one forward). Activations get no FLOP rate:
they are memory-bound and "FLOPs" of a max/min would mean nothing.

Adding an op: subclass ``OpBench`` (see ``ActivationBench`` / ``DepthwiseBench``), implement
``shapes``, ``case``, ``fuzz`` and ``demo_shape``, and add an instance to ``REGISTRY``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import shapes as S

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "half": "float16",
                 "f16": "float16", "bf16": "bfloat16", "fp64": "float64", "double": "float64",
                 "f64": "float64", "float": "float32"}
DTYPE_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
               torch.float64: "fp64"}
LAYOUTS = ("nchw", "channels_last")
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Shape:
    set: str                 # shape-set name ("sweep", "layers", "mobilenet_v2", ...)
    label: str               # full label for tables ("32x240x28x28", "2^20", ...)
    short: str               # short label for plot axes
    params: dict             # JSON-able description
    batch: int | None        # None for batch-less shapes (the 1-d sweep)
    source: str = ""         # which network layer it comes from


@dataclass
class Case:
    op: str
    family: str              # fastblocks op family, for backend resolution
    c_ops: tuple[str, ...]   # fastblocks._C ops the kernel backends need
    shape: Shape
    dtype: torch.dtype
    layout: str
    mode: str
    device: torch.device
    make_inputs: Callable[[int], list]   # seed -> positional args of eager / fast
    eager: Callable                      # the eager reference, (*args) -> Tensor
    fast: Callable                       # the fastblocks op, (*args) -> Tensor
    grad_idx: tuple[int, ...]            # args that get gradients in fwd+bwd
    bytes: int
    flops: int | None = None
    arg_names: tuple[str, ...] = ()      # names of the args, for messages

    @property
    def key(self) -> tuple:
        return (self.op, self.shape.set, self.shape.label, DTYPE_SHORT[self.dtype], self.layout,
                self.mode)


@dataclass
class FuzzCase:
    """One small parity configuration for `fastblocks verify`."""
    label: str
    args: list
    grad_idx: tuple[int, ...]
    eager: Callable
    fast: Callable
    arg_names: tuple[str, ...] = ()


class OpUnavailable(RuntimeError):
    """The op's module is not importable (not written yet, or broken)."""


class OpBench:
    name: str = ""
    family: str = ""
    c_ops: tuple[str, ...] = ()
    description: str = ""
    shape_sets: dict[str, str] = {}

    def missing(self) -> str | None:
        """None if the op can be benchmarked here, else why not."""
        return None

    def default_sets(self, device_type: str, quick: bool) -> list[str]:
        raise NotImplementedError

    def default_batches(self, device_type: str, quick: bool) -> list[int]:
        raise NotImplementedError

    def shapes(self, set_name: str, device_type: str, batches: Sequence[int], quick: bool) -> list[Shape]:
        raise NotImplementedError

    def case(self, shape: Shape, dtype: torch.dtype, layout: str, mode: str,
             device: torch.device) -> Case | None:
        """The case, or None where the combination means nothing (a 1-d tensor in
        channels_last)."""
        raise NotImplementedError

    def fuzz(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> list[FuzzCase]:
        """Small parity configurations: odd sizes, empty batch, layouts, non-dense views."""
        raise NotImplementedError

    def demo_shape(self, device_type: str) -> Shape:
        raise NotImplementedError


def _gen(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape, dtype, device, gen, scale=1.0, layout="nchw"):
    t = torch.randn(shape, device=device, generator=gen, dtype=torch.float32)
    if scale != 1.0:
        t.mul_(scale)
    t = t.to(dtype)
    if layout == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


# ---- activations -----------------------------------------------------------------------------

class ActivationBench(OpBench):
    family = "activation"
    c_ops = ("activation_forward", "activation_backward")
    shape_sets = {
        "sweep": "1-d tensors of 2^16..2^26 elements (2^16..2^22 on CPU): the bandwidth curve",
        "layers": "activation tensors (N,C,H,W) of MobileNetV3-Large / EfficientNet-B0",
    }

    def __init__(self, name: str):
        self.name = name
        self.description = f"fastblocks.ops.{name} (elementwise)"

    def _code(self) -> int:
        from fastblocks.ops._activation_codes import activation_code
        return activation_code(self.name)

    def missing(self):
        try:
            ops = importlib.import_module("fastblocks.ops")
            getattr(ops, self.name)
            importlib.import_module("fastblocks.ops.activation").reference_forward  # noqa: B018
        except Exception as exc:
            return f"fastblocks.ops.{self.name} is not available ({type(exc).__name__}: {exc})"
        return None

    def default_sets(self, device_type, quick):
        return ["sweep", "layers"]

    def default_batches(self, device_type, quick):
        return [32] if device_type == "cuda" else [1]

    def shapes(self, set_name, device_type, batches, quick):
        if set_name == "sweep":
            if device_type == "cuda":
                sizes = S.SWEEP_GPU_QUICK if quick else S.SWEEP_GPU
            else:
                sizes = S.SWEEP_CPU_QUICK if quick else S.SWEEP_CPU
            return [Shape("sweep", f"2^{n.bit_length() - 1}", f"2^{n.bit_length() - 1}",
                          {"numel": n}, None, "bandwidth sweep") for n in sizes]
        if set_name == "layers":
            tensors = S.ACTIVATION_TENSORS
            if quick:
                tensors = tensors[1::3]  # 3 of 7: large, mid, small
            out = []
            for n in batches:
                for t in tensors:
                    dims = (n, t.channels, t.size, t.size)
                    out.append(Shape("layers", "x".join(map(str, dims)),
                                     f"{t.channels}x{t.size}²" + (f" b{n}" if len(batches) > 1 else ""),
                                     {"shape": list(dims)}, n, t.source))
            return out
        raise KeyError(set_name)

    def case(self, shape, dtype, layout, mode, device):
        dims = (shape.params["numel"],) if "numel" in shape.params else tuple(shape.params["shape"])
        if layout == "channels_last" and len(dims) != 4:
            return None
        from fastblocks import ops
        from fastblocks.ops.activation import reference_forward
        code = self._code()
        numel = 1
        for d in dims:
            numel *= d
        es = torch.empty((), dtype=dtype).element_size()

        def make_inputs(seed):
            return [_randn(dims, dtype, device, _gen(device, seed), 3.0, layout)]

        fast_fn = getattr(ops, self.name)
        return Case(
            op=self.name, family=self.family, c_ops=self.c_ops, shape=shape, dtype=dtype,
            layout=layout, mode=mode, device=device, make_inputs=make_inputs,
            eager=lambda x: reference_forward(x, code), fast=fast_fn, grad_idx=(0,),
            bytes=(2 if mode == "fwd" else 5) * numel * es, flops=None, arg_names=("x",),
        )

    def fuzz(self, device, dtype, seed=0):
        gen = _gen(device, seed)

        def base(shape):
            t = torch.randn(shape, device=device, generator=gen) * 4
            kinks = torch.tensor([-3.0, 3.0, 0.0, 6.0, -6.0, 2.5], device=device)
            flat = t.view(-1)
            m = min(flat.numel(), kinks.numel())
            flat[:m] = kinks[:m]
            return t.to(dtype)

        from fastblocks import ops
        from fastblocks.ops.activation import reference_forward
        code = self._code()
        eager, fast = (lambda x: reference_forward(x, code)), getattr(ops, self.name)
        x = base((2, 6, 7, 5))
        configs = [
            ("2x6x7x5", x),
            ("2x6x7x5 channels_last", x.contiguous(memory_format=torch.channels_last)),
            ("2x6x7x5[:, ::2] (non-dense view)", x[:, ::2]),
            ("2x6x7x5 transposed (dense, permuted)", x.transpose(1, 3)),
            ("0x6x7x5 (empty)", x[:0]),
            ("113 (odd 1-d)", base((113,))),
            ("4099 (> one block)", base((4099,))),
        ]
        return [FuzzCase(label, [t], (0,), eager, fast, ("x",)) for label, t in configs]

    def demo_shape(self, device_type):
        n = 32 if device_type == "cuda" else 1
        return Shape("layers", f"{n}x240x28x28", "240x28²", {"shape": [n, 240, 28, 28]}, n,
                     S.ACTIVATION_TENSORS[3].source)


# ---- depthwise convolution -------------------------------------------------------------------

def _dw_module():
    try:
        mod = importlib.import_module("fastblocks.ops.depthwise")
        mod.depthwise_conv2d  # noqa: B018
        mod.reference_depthwise_conv2d  # noqa: B018
        return mod
    except Exception as exc:
        raise OpUnavailable(
            "fastblocks.ops.depthwise (depthwise_conv2d and reference_depthwise_conv2d) is not "
            f"available yet ({type(exc).__name__}: {exc})") from exc


class DepthwiseBench(OpBench):
    name = "depthwise_conv2d"
    family = "depthwise"
    c_ops = ("depthwise_forward", "depthwise_backward_input", "depthwise_backward_weight")
    description = "fastblocks.ops.depthwise_conv2d: depthwise conv + bias + activation"
    shape_sets = {
        "mobilenet_v2": "every depthwise layer of MobileNetV2 (ReLU6), 224x224",
        "mobilenet_v3_large": "every depthwise layer of MobileNetV3-Large (ReLU / hard-swish)",
        "efficientnet_b0": "every depthwise layer of EfficientNet-B0 (SiLU)",
        "all": "the three networks' layers, deduplicated across networks (GPU default)",
        "representative": "6 layers, one per kernel/stride kind (CPU default, --quick)",
    }

    def missing(self):
        try:
            _dw_module()
        except OpUnavailable as exc:
            return str(exc)
        return None

    def default_sets(self, device_type, quick):
        return ["all"] if device_type == "cuda" and not quick else ["representative"]

    def default_batches(self, device_type, quick):
        if device_type == "cuda":
            return [1, 32] if quick else [1, 32, 256]
        return [1]

    def _layers(self, set_name):
        if set_name in S.DEPTHWISE_NETS:
            return S.DEPTHWISE_NETS[set_name]
        if set_name == "all":
            return S.DEPTHWISE_ALL
        if set_name == "representative":
            return S.DEPTHWISE_REPRESENTATIVE
        raise KeyError(set_name)

    @staticmethod
    def _shape(set_name, layer: S.DepthwiseLayer, n: int, multi_batch: bool) -> Shape:
        label = (f"{n}x{layer.channels}x{layer.size}x{layer.size} k{layer.kernel} s{layer.stride} "
                 f"{layer.activation}")
        short = f"{layer.channels}x{layer.size}² k{layer.kernel}s{layer.stride}"
        if multi_batch:
            short += f" b{n}"
        params = {"N": n, "C": layer.channels, "H": layer.size, "W": layer.size,
                  "kernel": layer.kernel, "stride": layer.stride, "padding": layer.padding,
                  "dilation": 1, "bias": True, "activation": layer.activation, "net": layer.net}
        return Shape(set_name, label, short, params, n, f"{layer.net}: {layer.source}")

    def shapes(self, set_name, device_type, batches, quick):
        layers = self._layers(set_name)
        return [self._shape(set_name, layer, n, len(batches) > 1) for n in batches for layer in layers]

    def case(self, shape, dtype, layout, mode, device):
        mod = _dw_module()
        p = shape.params
        n, c, h, w, k = p["N"], p["C"], p["H"], p["W"], p["kernel"]
        stride, padding, dilation, act = p["stride"], p["padding"], p["dilation"], p["activation"]
        mult = p.get("multiplier", 1)
        cout = c * mult
        oh = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
        ow = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
        es = torch.empty((), dtype=dtype).element_size()
        x_n, w_n, b_n, y_n = n * c * h * w, cout * k * k, cout if p["bias"] else 0, n * cout * oh * ow
        fwd_bytes = (x_n + w_n + b_n + y_n) * es
        bwd_bytes = (y_n + x_n + w_n + x_n + w_n + b_n) * es
        fwd_flops = 2 * n * cout * oh * ow * k * k

        def make_inputs(seed):
            gen = _gen(device, seed)
            x = _randn((n, c, h, w), dtype, device, gen, 1.0, layout)
            wt = _randn((cout, 1, k, k), dtype, device, gen, 1.0 / k)
            b = _randn((cout,), dtype, device, gen, 0.1) if p["bias"] else None
            return [x, wt, b]

        ref, fast = mod.reference_depthwise_conv2d, mod.depthwise_conv2d
        return Case(
            op=self.name, family=self.family, c_ops=self.c_ops, shape=shape, dtype=dtype,
            layout=layout, mode=mode, device=device, make_inputs=make_inputs,
            eager=lambda x, wt, b: ref(x, wt, b, stride, padding, dilation, act),
            fast=lambda x, wt, b: fast(x, wt, b, stride, padding, dilation, act),
            grad_idx=(0, 1, 2) if p["bias"] else (0, 1),
            bytes=fwd_bytes if mode == "fwd" else fwd_bytes + bwd_bytes,
            flops=fwd_flops if mode == "fwd" else 3 * fwd_flops,
            arg_names=("x", "weight", "bias"),
        )

    def fuzz(self, device, dtype, seed=0):
        mod = _dw_module()
        gen = _gen(device, seed)
        # (N, C, H, W, multiplier, (kh, kw), stride, padding, dilation, bias, activation, layout)
        configs = [
            (2, 3, 7, 9, 1, (3, 3), 1, 1, 1, True, None, "nchw"),
            (1, 4, 8, 8, 2, (3, 3), 2, 1, 1, False, "relu6", "channels_last"),
            (2, 5, 11, 6, 1, (5, 5), 1, 2, 1, True, "hardswish", "nchw"),
            (1, 3, 13, 13, 1, (5, 5), 2, 2, 1, True, "silu", "channels_last"),
            (1, 2, 9, 9, 1, (3, 3), 1, 2, 2, True, "hardsigmoid", "nchw"),
            (2, 3, 6, 7, 3, (1, 3), (1, 2), (0, 1), 1, True, "relu", "nchw"),
            (0, 3, 5, 5, 1, (3, 3), 1, 1, 1, True, "relu6", "nchw"),
            (1, 1, 1, 1, 1, (3, 3), 1, 1, 1, True, None, "nchw"),
            (1, 8, 7, 7, 1, (7, 7), 1, 3, 1, True, "silu", "channels_last"),
            (1, 13, 15, 15, 1, (3, 3), 2, 0, 1, False, "hardswish", "nchw"),
        ]
        out = []
        for n, c, h, w, m, (kh, kw), s, pad, d, bias, act, layout in configs:
            x = _randn((n, c, h, w), dtype, device, gen, 1.0, layout)
            wt = _randn((c * m, 1, kh, kw), dtype, device, gen, 1.0 / kh)
            b = _randn((c * m,), dtype, device, gen, 0.1) if bias else None
            label = (f"{n}x{c}x{h}x{w} m{m} k{kh}x{kw} s{s} p{pad} d{d}{' bias' if bias else ''} "
                     f"{act or 'none'} {layout}")
            out.append((label, [x, wt, b], (0, 1, 2) if bias else (0, 1), (s, pad, d, act)))
        # a non-dense input: every other row of a taller tensor
        xt = _randn((2, 3, 14, 9), dtype, device, gen)
        out.append(("2x3x14x9[:, :, ::2] (non-dense view) k3 s1 p1 relu6",
                    [xt[:, :, ::2], _randn((3, 1, 3, 3), dtype, device, gen, 1 / 3),
                     _randn((3,), dtype, device, gen, 0.1)], (0, 1, 2), (1, 1, 1, "relu6")))
        ref, fast = mod.reference_depthwise_conv2d, mod.depthwise_conv2d

        def fns(s, pad, d, act):
            return (lambda x, wt, b: ref(x, wt, b, s, pad, d, act),
                    lambda x, wt, b: fast(x, wt, b, s, pad, d, act))

        return [FuzzCase(label, args, gidx, *fns(*geo), ("x", "weight", "bias"))
                for label, args, gidx, geo in out]

    def demo_shape(self, device_type):
        n = 32 if device_type == "cuda" else 1
        return self._shape("efficientnet_b0", S.EFFICIENTNET_B0[4], n, False)


# ---- squeeze-and-excitation ------------------------------------------------------------------

def _se_module():
    try:
        mod = importlib.import_module("fastblocks.ops.squeeze_excite")
        mod.squeeze_excite  # noqa: B018
        mod.reference_squeeze_excite  # noqa: B018
        return mod
    except Exception as exc:
        raise OpUnavailable(
            "fastblocks.ops.squeeze_excite is not available "
            f"({type(exc).__name__}: {exc})") from exc


class SqueezeExciteBench(OpBench):
    """Bytes: the two passes over x each way. fwd: read x (pool), read x and write y (scale)
    = 3 * numel; fwd+bwd adds read grad_y and x (reduction), read grad_y and write grad_x
    = 7 * numel (weights and the (N, C) means are below 1%). FLOPs: none reported (the MLP's
    2*N*C*C_r*2 is tiny and the passes are memory-bound)."""
    name = "squeeze_excite"
    family = "squeeze_excite"
    c_ops = ("squeeze_excite_forward", "squeeze_excite_backward")
    description = "fastblocks.ops.squeeze_excite: pool -> FC -> act -> FC -> gate -> scale"
    shape_sets = {
        "mobilenet_v3_large": "every SE of MobileNetV3-Large (ReLU, hard-sigmoid), 224x224",
        "efficientnet_b0": "every SE of EfficientNet-B0 (SiLU, sigmoid)",
        "se_resnet_50": "every SE of SE-ResNet-50 (ReLU, sigmoid, reduction 16)",
        "all": "the three networks' SE layers (GPU default)",
        "representative": "5 layers from large-map/few-channel to 7x7/1152 (CPU default, --quick)",
    }

    def missing(self):
        try:
            _se_module()
        except OpUnavailable as exc:
            return str(exc)
        return None

    def default_sets(self, device_type, quick):
        return ["all"] if device_type == "cuda" and not quick else ["representative"]

    def default_batches(self, device_type, quick):
        if device_type == "cuda":
            return [1, 32] if quick else [1, 32, 256]
        return [1]

    def shapes(self, set_name, device_type, batches, quick):
        layers = {"all": S.SE_ALL, "representative": S.SE_REPRESENTATIVE}.get(set_name) or S.SE_NETS[set_name]
        out = []
        for n in batches:
            for layer in layers:
                label = (f"{n}x{layer.channels}x{layer.size}x{layer.size} r{layer.squeeze} "
                         f"{layer.activation}/{layer.gate}")
                short = f"{layer.channels}x{layer.size}² r{layer.squeeze}" + (f" b{n}" if len(batches) > 1 else "")
                params = {"N": n, "C": layer.channels, "R": layer.squeeze, "H": layer.size,
                          "W": layer.size, "activation": layer.activation, "gate": layer.gate,
                          "net": layer.net}
                out.append(Shape(set_name, label, short, params, n, f"{layer.net}: {layer.source}"))
        return out

    def case(self, shape, dtype, layout, mode, device):
        mod = _se_module()
        p = shape.params
        n, c, r, h, w, act, gate = p["N"], p["C"], p["R"], p["H"], p["W"], p["activation"], p["gate"]
        es = torch.empty((), dtype=dtype).element_size()
        numel = n * c * h * w

        def make_inputs(seed):
            gen = _gen(device, seed)
            return [_randn((n, c, h, w), dtype, device, gen, 1.0, layout),
                    _randn((r, c, 1, 1), dtype, device, gen, c ** -0.5),
                    _randn((r,), dtype, device, gen, 0.1),
                    _randn((c, r, 1, 1), dtype, device, gen, r ** -0.5),
                    _randn((c,), dtype, device, gen, 0.1)]

        ref, fast = mod.reference_squeeze_excite, mod.squeeze_excite
        return Case(
            op=self.name, family=self.family, c_ops=self.c_ops, shape=shape, dtype=dtype,
            layout=layout, mode=mode, device=device, make_inputs=make_inputs,
            eager=lambda *a: ref(*a, act, gate), fast=lambda *a: fast(*a, act, gate),
            grad_idx=(0, 1, 2, 3, 4), bytes=(3 if mode == "fwd" else 7) * numel * es, flops=None,
            arg_names=("x", "weight", "bias", "weight", "bias"),
        )

    def fuzz(self, device, dtype, seed=0):
        mod = _se_module()
        gen = _gen(device, seed)
        # (N, C, C_r, H, W, bias, activation, gate, layout)
        configs = [(2, 6, 2, 7, 5, True, "relu", "sigmoid", "nchw"),
                   (1, 8, 3, 4, 4, False, "silu", "sigmoid", "channels_last"),
                   (3, 5, 7, 1, 1, True, "hardswish", "hardsigmoid", "nchw"),
                   (0, 4, 2, 3, 3, True, "relu6", "sigmoid", "nchw"),
                   (2, 17, 4, 13, 3, True, "relu", "hardsigmoid", "channels_last")]
        out = []
        for n, c, r, h, w, bias, act, gate, layout in configs:
            args = [_randn((n, c, h, w), dtype, device, gen, 1.0, layout),
                    _randn((r, c), dtype, device, gen, c ** -0.5),
                    _randn((r,), dtype, device, gen, 0.1) if bias else None,
                    _randn((c, r), dtype, device, gen, r ** -0.5),
                    _randn((c,), dtype, device, gen, 0.1) if bias else None]
            label = f"{n}x{c}x{h}x{w} r{r}{' bias' if bias else ''} {act}/{gate} {layout}"
            gidx = (0, 1, 2, 3, 4) if bias else (0, 1, 3)
            out.append(FuzzCase(label, args, gidx,
                                lambda *a, act=act, gate=gate: mod.reference_squeeze_excite(*a, act, gate),
                                lambda *a, act=act, gate=gate: mod.squeeze_excite(*a, act, gate),
                                ("x", "weight", "bias", "weight", "bias")))
        return out

    def demo_shape(self, device_type):
        n = 32 if device_type == "cuda" else 1
        return self.shapes("efficientnet_b0", device_type, [n], False)[7]


REGISTRY: dict[str, OpBench] = {
    **{name: ActivationBench(name) for name in ("hardswish", "hardsigmoid", "relu6", "silu")},
    "depthwise_conv2d": DepthwiseBench(),
    "squeeze_excite": SqueezeExciteBench(),
}


def get_op(name: str) -> OpBench:
    if name not in REGISTRY:
        raise KeyError(f"unknown op {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_ops() -> list[str]:
    return list(REGISTRY)


# ---- shuffle family: channel_shuffle, concat_shuffle, grouped_conv2d ----------------------------

def _shuffle_module():
    try:
        return importlib.import_module("fastblocks.ops.shuffle")
    except Exception as exc:
        raise OpUnavailable(f"fastblocks.ops.shuffle is not available ({type(exc).__name__}: {exc})") from exc


class ShuffleBench(OpBench):
    """channel_shuffle (eager: F.channel_shuffle, ATen's kernel) or concat_shuffle (eager:
    torch.cat then F.channel_shuffle; ``a`` is the first half of a wider tensor, as
    ShuffleNet v2's x.chunk(2, dim=1) makes it). Bytes: read and write every element once
    (fwd), and again for the gradient (fwd+bwd)."""
    family = "shuffle"
    c_ops = ("channel_shuffle_forward", "channel_shuffle_backward")
    shape_sets = {"shufflenet": "ShuffleNet v1 (g=3, 8) and v2 1.0x shuffle tensors, 224x224"}

    def __init__(self, name: str):
        self.name = name
        self.description = ("fastblocks.ops.channel_shuffle" if name == "channel_shuffle" else
                            "fastblocks.ops.concat_shuffle: torch.cat + channel shuffle in one pass")

    def missing(self):
        try:
            _shuffle_module()
        except OpUnavailable as exc:
            return str(exc)
        return None

    def default_sets(self, device_type, quick):
        return ["shufflenet"]

    def default_batches(self, device_type, quick):
        if device_type == "cuda":
            return [1, 32] if quick else [1, 32, 256]
        return [1, 32]

    def shapes(self, set_name, device_type, batches, quick):
        if set_name != "shufflenet":
            raise KeyError(set_name)
        tensors = [t for t in S.SHUFFLE_TENSORS if self.name == "channel_shuffle" or t.groups == 2]
        return [Shape(set_name, f"{n}x{t.channels}x{t.size}x{t.size} g{t.groups}",
                      f"{t.channels}x{t.size}² g{t.groups}" + (f" b{n}" if len(batches) > 1 else ""),
                      {"shape": [n, t.channels, t.size, t.size], "groups": t.groups}, n, t.source)
                for n in batches for t in tensors]

    def case(self, shape, dtype, layout, mode, device):
        mod = _shuffle_module()
        n, c, h, w = shape.params["shape"]
        g = shape.params["groups"]
        es = torch.empty((), dtype=dtype).element_size()
        numel = n * c * h * w
        if self.name == "channel_shuffle":
            def make_inputs(seed):
                return [_randn((n, c, h, w), dtype, device, _gen(device, seed), 1.0, layout)]
            eager, fast, names = (lambda x: mod.reference_channel_shuffle(x, g),
                                  lambda x: mod.channel_shuffle(x, g), ("x",))
            grad_idx = (0,)
        else:
            def make_inputs(seed):
                gen = _gen(device, seed)
                x = _randn((n, c, h, w), dtype, device, gen, 1.0, layout)
                return [x[:, : c // 2], _randn((n, c - c // 2, h, w), dtype, device, gen, 1.0, layout)]
            eager, fast, names = (lambda a, b: mod.reference_concat_shuffle(a, b, g),
                                  lambda a, b: mod.concat_shuffle(a, b, g), ("a", "b"))
            grad_idx = (0, 1)
        return Case(op=self.name, family=self.family, c_ops=self.c_ops, shape=shape, dtype=dtype,
                    layout=layout, mode=mode, device=device, make_inputs=make_inputs, eager=eager,
                    fast=fast, grad_idx=grad_idx, bytes=(2 if mode == "fwd" else 4) * numel * es,
                    flops=None, arg_names=names)

    def fuzz(self, device, dtype, seed=0):
        mod = _shuffle_module()
        gen = _gen(device, seed)
        out = []
        for n, c, h, w, g, layout in ((2, 6, 5, 3, 3, "nchw"), (1, 16, 4, 4, 8, "channels_last"),
                                      (0, 4, 3, 3, 2, "nchw"), (1, 12, 1, 7, 4, "channels_last")):
            x = _randn((n, c, h, w), dtype, device, gen, 1.0, layout)
            label = f"{n}x{c}x{h}x{w} g{g} {layout}"
            if self.name == "channel_shuffle":
                out.append(FuzzCase(label, [x], (0,), lambda x, g=g: mod.reference_channel_shuffle(x, g),
                                    lambda x, g=g: mod.channel_shuffle(x, g), ("x",)))
            else:
                b = _randn((n, c // 2 + g, h, w), dtype, device, gen, 1.0, layout)
                out.append(FuzzCase(label + " (a: a channel slice)", [x[:, : c // 2 + g], b], (0, 1),
                                    lambda a, b, g=g: mod.reference_concat_shuffle(a, b, g),
                                    lambda a, b, g=g: mod.concat_shuffle(a, b, g), ("a", "b")))
        return out

    def demo_shape(self, device_type):
        n = 32 if device_type == "cuda" else 1
        return Shape("shufflenet", f"{n}x116x28x28 g2", "116x28² g2",
                     {"shape": [n, 116, 28, 28], "groups": 2}, n, S.SHUFFLE_TENSORS[0].source)


class GroupedConvBench(OpBench):
    """grouped_conv2d with bias (a folded BN), activation and shuffle as the network has them;
    eager: F.conv2d, then the activation, then F.channel_shuffle (three passes)."""
    name = "grouped_conv2d"
    family = "shuffle"
    c_ops = ("channel_shuffle_forward", "channel_shuffle_backward")
    description = "fastblocks.ops.grouped_conv2d: grouped conv + bias + activation + shuffle"
    shape_sets = {
        "shufflenet_v1_g3": "ShuffleNet v1 g=3: the 1x1 GConvs (+ shuffle), 224x224",
        "shufflenet_v1_g8": "ShuffleNet v1 g=8: the 1x1 GConvs (+ shuffle), 224x224",
        "resnext50_32x4d": "ResNeXt-50 32x4d: every grouped 3x3 (cardinality 32), 224x224",
    }

    def missing(self):
        try:
            importlib.import_module("fastblocks.ops.grouped_conv")
        except Exception as exc:
            return f"fastblocks.ops.grouped_conv is not available ({type(exc).__name__}: {exc})"
        return None

    def default_sets(self, device_type, quick):
        return list(self.shape_sets)

    def default_batches(self, device_type, quick):
        if device_type == "cuda":
            return [1, 32] if quick else [1, 32, 256]
        return [1]

    def shapes(self, set_name, device_type, batches, quick):
        layers = S.GROUPED_CONV_NETS[set_name]
        out = []
        for n in batches:
            for L in layers:
                label = (f"{n}x{L.c_in}x{L.size}x{L.size}->{L.c_out} k{L.kernel} s{L.stride} g{L.groups}"
                         f" {L.activation or 'none'}" + (f" shuffle{L.shuffle_groups}" if L.shuffle_groups else ""))
                short = f"{L.c_in}->{L.c_out} {L.size}² g{L.groups}" + (f" b{n}" if len(batches) > 1 else "")
                params = {"N": n, "C_in": L.c_in, "C_out": L.c_out, "H": L.size, "W": L.size,
                          "kernel": L.kernel, "stride": L.stride, "padding": L.padding,
                          "groups": L.groups, "activation": L.activation,
                          "shuffle_groups": L.shuffle_groups, "net": L.net}
                out.append(Shape(set_name, label, short, params, n, f"{L.net}: {L.source}"))
        return out

    def case(self, shape, dtype, layout, mode, device):
        from fastblocks.ops.grouped_conv import grouped_conv2d, reference_grouped_conv2d
        p = shape.params
        n, ci, co, h, w, k, s = p["N"], p["C_in"], p["C_out"], p["H"], p["W"], p["kernel"], p["stride"]
        kw = dict(stride=s, padding=p["padding"], groups=p["groups"], activation=p["activation"],
                  shuffle_groups=p["shuffle_groups"])
        oh = (h + 2 * p["padding"] - k) // s + 1
        es = torch.empty((), dtype=dtype).element_size()
        x_n, w_n, y_n = n * ci * h * w, co * ci // p["groups"] * k * k, n * co * oh * oh
        fwd_bytes = (x_n + w_n + co + y_n) * es
        bwd_bytes = (y_n + x_n + w_n + x_n + w_n + co) * es
        fwd_flops = 2 * n * co * oh * oh * (ci // p["groups"]) * k * k

        def make_inputs(seed):
            gen = _gen(device, seed)
            return [_randn((n, ci, h, w), dtype, device, gen, 1.0, layout),
                    _randn((co, ci // p["groups"], k, k), dtype, device, gen, (k * k * ci / p["groups"]) ** -0.5),
                    _randn((co,), dtype, device, gen, 0.1)]

        return Case(op=self.name, family=self.family, c_ops=self.c_ops, shape=shape, dtype=dtype,
                    layout=layout, mode=mode, device=device, make_inputs=make_inputs,
                    eager=lambda x, wt, b: reference_grouped_conv2d(x, wt, b, **kw),
                    fast=lambda x, wt, b: grouped_conv2d(x, wt, b, **kw), grad_idx=(0, 1, 2),
                    bytes=fwd_bytes if mode == "fwd" else fwd_bytes + bwd_bytes,
                    flops=fwd_flops if mode == "fwd" else 3 * fwd_flops,
                    arg_names=("x", "weight", "bias"))

    def fuzz(self, device, dtype, seed=0):
        from fastblocks.ops.grouped_conv import grouped_conv2d, reference_grouped_conv2d
        gen = _gen(device, seed)
        out = []
        for n, ci, co, hw, k, s, g, act, sg, layout in (
                (2, 6, 12, 5, 1, 1, 3, "relu", 3, "nchw"), (1, 16, 16, 6, 3, 2, 8, "relu", None, "channels_last"),
                (1, 4, 6, 4, 1, 1, 1, "relu6", 3, "nchw"), (0, 6, 6, 3, 3, 1, 2, "silu", 2, "channels_last"),
                (1, 8, 8, 7, 3, 1, 4, "hardswish", 4, "nchw")):
            args = [_randn((n, ci, hw, hw), dtype, device, gen, 1.0, layout),
                    _randn((co, ci // g, k, k), dtype, device, gen, 0.5), _randn((co,), dtype, device, gen, 0.1)]
            kw = dict(stride=s, padding=k // 2, groups=g, activation=act, shuffle_groups=sg)
            out.append(FuzzCase(f"{n}x{ci}x{hw}x{hw}->{co} k{k} s{s} g{g} {act} shuffle{sg} {layout}",
                                args, (0, 1, 2), lambda x, wt, b, kw=kw: reference_grouped_conv2d(x, wt, b, **kw),
                                lambda x, wt, b, kw=kw: grouped_conv2d(x, wt, b, **kw), ("x", "weight", "bias")))
        return out

    def demo_shape(self, device_type):
        n = 32 if device_type == "cuda" else 1
        return self.shapes("shufflenet_v1_g3", device_type, [n], True)[2]


REGISTRY.update({"channel_shuffle": ShuffleBench("channel_shuffle"),
                 "concat_shuffle": ShuffleBench("concat_shuffle"),
                 "grouped_conv2d": GroupedConvBench()})


# ---- conv -> BN -> activation ----------------------------------------------------------------

class ConvBNActBench(OpBench):
    """fastblocks.ops.conv_bn_act: ``fwd`` is eval mode (BN folded: conv_bias_act), ``fwd+bwd``
    training (batch statistics, running stats updated, memory-saving backward). Bytes: x,
    weight, y (fwd); plus grad_y, x, z read and grad_x, grad_weight written (bwd). FLOPs:
    the convolution's (2 * N * C_out * OH * OW * C_in/groups * k * k; x3 with backward)."""
    name = "conv_bn_act"
    family = "conv_bn_act"
    c_ops = ("bn_act_train_forward", "bn_act_train_backward")
    description = "fastblocks.ops.conv_bn_act: conv + BatchNorm + activation (eval folded / train)"
    shape_sets = {net: f"the conv-BN-act layers of {net} (1x1 and dense kxk), 224x224"
                  for net in S.CONV_BN_ACT_NETS}
    shape_sets["all"] = "the three networks' conv-BN-act layers"

    def missing(self):
        try:
            mod = importlib.import_module("fastblocks.ops.conv_bn_act")
            mod.conv_bn_act, mod.reference_conv_bn_act  # noqa: B018
        except Exception as exc:
            return f"fastblocks.ops.conv_bn_act is not available ({type(exc).__name__}: {exc})"
        return None

    def default_sets(self, device_type, quick):
        return ["mobilenet_v2"] if quick or device_type == "cpu" else ["all"]

    def default_batches(self, device_type, quick):
        if device_type == "cuda":
            return [1, 32] if quick else [1, 32, 256]
        return [1]

    def shapes(self, set_name, device_type, batches, quick):
        layers = S.CONV_BN_ACT_ALL if set_name == "all" else S.CONV_BN_ACT_NETS[set_name]
        out = []
        for n in batches:
            for l in layers:
                label = (f"{n}x{l.in_channels}x{l.size}x{l.size} k{l.kernel} s{l.stride} "
                         f"->{l.out_channels} {l.activation}")
                params = {"N": n, "C_in": l.in_channels, "C_out": l.out_channels, "H": l.size,
                          "kernel": l.kernel, "stride": l.stride, "padding": l.padding,
                          "activation": l.activation, "net": l.net}
                short = f"{l.in_channels}->{l.out_channels} {l.size}² k{l.kernel}s{l.stride}"
                out.append(Shape(set_name, label, short + (f" b{n}" if len(batches) > 1 else ""),
                                 params, n, f"{l.net}: {l.source}"))
        return out

    def case(self, shape, dtype, layout, mode, device):
        from fastblocks import ops
        from fastblocks.ops.conv_bn_act import reference_conv_bn_act
        p = shape.params
        n, ci, co, h, k = p["N"], p["C_in"], p["C_out"], p["H"], p["kernel"]
        s, pad, act = p["stride"], p["padding"], p["activation"]
        oh = (h + 2 * pad - k) // s + 1
        es = torch.empty((), dtype=dtype).element_size()
        x_n, w_n, y_n = n * ci * h * h, co * ci * k * k, n * co * oh * oh
        fwd_bytes = (x_n + w_n + y_n) * es
        training = mode != "fwd"
        kw = dict(training=training, stride=s, padding=pad, activation=act)

        def make_inputs(seed):
            gen = _gen(device, seed)
            stats = torch.float32 if dtype != torch.float64 else dtype
            return [_randn((n, ci, h, h), dtype, device, gen, 1.0, layout),
                    _randn((co, ci, k, k), dtype, device, gen, (ci * k * k) ** -0.5),
                    _randn((co,), dtype, device, gen, 0.1).add_(1.0),
                    _randn((co,), dtype, device, gen, 0.1),
                    _randn((co,), stats, device, gen, 0.1),
                    _randn((co,), stats, device, gen, 0.1).abs_().add_(0.5)]

        def fast(x, w, bw, bb, rm, rv):
            return ops.conv_bn_act(x, w, None, bw, bb, rm, rv, **kw)

        def eager(x, w, bw, bb, rm, rv):
            return reference_conv_bn_act(x, w, None, bw, bb, rm, rv, **kw)
        return Case(
            op=self.name, family=self.family, c_ops=self.c_ops, shape=shape, dtype=dtype,
            layout=layout, mode=mode, device=device, make_inputs=make_inputs, eager=eager,
            fast=fast, grad_idx=(0, 1, 2, 3),
            bytes=fwd_bytes if not training else fwd_bytes + (3 * y_n + 2 * x_n + w_n) * es,
            flops=2 * y_n * ci * k * k * (1 if not training else 3),
            arg_names=("x", "weight", "bn_weight", "bn_bias", "running_mean", "running_var"),
        )

    def fuzz(self, device, dtype, seed=0):
        from fastblocks import ops
        from fastblocks.ops.conv_bn_act import reference_conv_bn_act
        gen = _gen(device, seed)
        stats = torch.float64 if dtype == torch.float64 else torch.float32
        out = []
        # (N, C_in, C_out, H, W, k, stride, padding, groups, activation, layout, training)
        for cfg in [(2, 4, 6, 7, 5, 3, 1, 1, 2, "relu", "nchw", True),
                    (1, 3, 8, 9, 9, 1, 1, 0, 1, "silu", "channels_last", True),
                    (2, 6, 4, 5, 6, 3, 2, 1, 1, "hardswish", "nchw", False),
                    (3, 5, 7, 4, 4, 1, 1, 0, 1, None, "channels_last", False)]:
            n, ci, co, h, w, k, s, pad, g, act, layout, training = cfg
            args = [_randn((n, ci, h, w), dtype, device, gen, 1.0, layout),
                    _randn((co, ci // g, k, k), dtype, device, gen, 0.5),
                    _randn((co,), dtype, device, gen, 0.1).add_(1.0),
                    _randn((co,), dtype, device, gen, 0.1)]
            rm = torch.zeros(co, dtype=stats, device=device)
            rv = torch.ones(co, dtype=stats, device=device)
            kw = dict(training=training, stride=s, padding=pad, groups=g, activation=act)
            label = (f"{n}x{ci}x{h}x{w} ->{co} k{k} s{s} g{g} {act or 'none'} {layout} "
                     f"{'train' if training else 'eval'}")
            out.append(FuzzCase(
                label, args, (0, 1, 2, 3),
                lambda x, wt, bw, bb, kw=kw, rm=rm, rv=rv: reference_conv_bn_act(
                    x, wt, None, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw),
                lambda x, wt, bw, bb, kw=kw, rm=rm, rv=rv: ops.conv_bn_act(
                    x, wt, None, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw),
                ("x", "weight", "bn_weight", "bn_bias")))
        return out

    def demo_shape(self, device_type):
        n = 32 if device_type == "cuda" else 1
        return self.shapes("mobilenet_v2", device_type, [n], True)[3]


REGISTRY["conv_bn_act"] = ConvBNActBench()
