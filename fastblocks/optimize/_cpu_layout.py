"""On CPU, an optimized model in eval mode runs channels_last inside when it is given NCHW input.

Why: the fused conv -> BN -> activation path on CPU is oneDNN's convolution with post-ops on
prepacked weights (fastblocks/ops/_mkldnn_conv.py), and oneDNN serves it fast only for
channels_last activations; per layer, converting NCHW -> NHWC -> NCHW around each conv costs
more than it saves (MobileNetV2's 19 1x1 layers at batch 8, 1 thread: 104 ms converted per
layer vs 64 ms for ATen's NCHW convolution; bench/cpu_probes/nchw_conv_per_layer_layouts.py, the 2-core EPYC VM). So
the layout is changed once, at the model's input, and changed back at its output, as
inductor's layout optimisation does inside a compiled graph (optimize() installs it where
``pays_off``: a conv was fused and no norm layer is left that eager runs slower on
channels_last, and enough of them to pay for the two conversions):

- a forward pre-hook on the root module converts the first positional argument, when it is a
  4-d NCHW floating-point CPU tensor of a dtype oneDNN serves, to channels_last;
- a forward hook converts every 4-d channels_last tensor of the output back to NCHW
  (contiguous), so callers see the strides eager would have given them;
- values are those of eager up to the summation order of the convolutions (the layouts run
  different oneDNN/ATen kernels, as eager's own NCHW and channels_last runs do).

Not for a batch of one whose convolutions all read small inputs (at most
``_ATEN_NATIVE_MAX_NUMEL`` values per image, e.g. CIFAR-size ResNets): there channels_last
costs more than it saves (ATen itself runs such convolutions with its native im2col kernel,
not oneDNN, for batch 1). The sizes are recorded from the convolutions' inputs in the trial
run below and scaled by the input's size on each call, so every call decides by its tensors.

Numerics: oneDNN's channels_last kxk convolutions sum a long reduction (more than 16 input
channels) in one accumulator where its NCHW ones, eager's, sum 16-channel blocks apart
(ops/_mkldnn_conv.py, ``long_reduction``, has the per-layer numbers): 2.2x eager's error per
layer (geomean over inception_v3's 53 such layers, 1 and 2 threads). Where such convolutions
carry most of a model's multiply-adds, that error reaches the output: zoo inception_v3 (long
kxk share 0.81) erred 2.5-2.7x eager's at 2 threads, past the parity rule's 2x. So the trial run
also counts each convolution's multiply-adds, and a model whose long kxk convolutions carry more
than ``_EXACT_MIN_SHARE`` of them runs those convolutions through eager's NCHW convolution
(``_mkldnn_conv.exact_reductions_on`` while its forward runs; the rest stays channels_last).

Only in eval mode: user code in a forward can depend on strides (``x.view(n, -1)`` on a 4-d
activation fails on channels_last), so the first converted call runs the model once on the
channels_last input under ``torch.no_grad()`` and keeps the conversion only if that succeeds
(else NCHW for good, with a note in ``model.fastblocks_report``). A training forward updates
BatchNorm statistics, so it cannot be tried twice: training keeps the caller's layout. Under
torch.compile/export nothing is converted (inductor chooses layouts itself). ``revert()``
removes both hooks. The hooks are module-level functions, so deepcopy and pickling keep them.
"""
from __future__ import annotations

import threading

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..ops import _mkldnn_conv
from ._classswap import is_swapped

_STATE = "_fastblocks_cpu_channels_last"  # model.__dict__: {"ok": None | bool, "why": str}
_active = threading.local()               # ids of root modules whose input this thread converted


# Norm layers eager runs slower on channels_last CPU tensors: BatchNorm2d(144) + ReLU on
# 8x144x56x56, eval, 1 thread: 2.2 ms NCHW, 10.5 ms channels_last (bench/cpu_probes/batchnorm_layouts.py, the
# EPYC VM). A model that still runs one of them eagerly after optimize() (a pre-activation
# BN -> ReLU -> conv, as in DenseNet) keeps NCHW.
_EAGER_SLOWER_ON_CHANNELS_LAST = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                                  nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


# The two conversions cost about what a few fused layers gain: on one optimized ShuffleNet
# unit (3 convs) the converted model ran 0.3-0.95x eager (shuffle-fuse helper's probe, the
# EPYC VM), on whole networks (17-52 fused convs) 1.14-1.51x (see the package README). A
# model with fewer fused convs than this keeps the caller's layout.
_MIN_FUSED_CONVS = 8

# A batch of one whose every convolution reads at most this many values per image keeps NCHW.
# The number is ATen's own (aten/src/ATen/native/Convolution.cpp, use_mkldnn: fp32, groups 1,
# kernel <= 3x3, batch 1 and input numel <= 20480 run the native kernel: "for some case,
# native is faster"). Measured, the 2-core EPYC VM, 1 thread, batch 1, zoo resnet110_sd at
# 32x32 (convolution inputs of 16x32x32 = 16384 values at most), interleaved medians of 21
# calls: eager 78.2 ms, optimized with channels_last inside 99.9 ms (0.78x), optimized in NCHW
# 88.6 ms; per fused layer 132 us on either layout vs 105 us (conv) + 17 us (BN) eager, and
# the channels_last run adds ~13 ms elsewhere (layout-mixed adds, pads and ReLUs). Second run:
# 105.2 / 123.5 / 109.7 ms. With this rule, `fastblocks bench models --model resnet110_sd
# --batch 1 --threads 1 --quick`: 0.95x and 0.91x eager (was 0.84x and 0.77x; the rest is the
# fused conv's per-call Python cost, ~15 us on a ~100 us layer). fractalnet at 32x32 (inputs up to
# 64x32x32 = 65536 values) measured 1.01x with channels_last and keeps it.
_ATEN_NATIVE_MAX_NUMEL = 20480

# The share of a model's convolution multiply-adds in long kxk reductions (_mkldnn_conv.
# long_reduction) above which those run exactly (module docstring). Measured, zoo models at the
# test suite's sizes, batch 2, eval, 2 threads, the 2-core EPYC VM (bench/cpu_probes/
# zoo_eval_error_ratios.py --no-exact, which prints the share too): optimized
# output error vs float64 as a ratio to eager's (limit 2.0) without the exact route: share
# 0.45-0.51 (resnet50, resnet101, resnet152, se_resnet50, inception_resnet_v2) 1.05-1.32; share
# 0.65-1.0 (resnet18, resnet34, wide_resnet50_2, vgg16_bn, vgg19_bn, googlenet, inception_v3,
# inception_v4, inception_resnet_v1) 1.04-2.70, with inception_v3 2.70, vgg16_bn 2.05,
# resnet34 1.76, wide_resnet50_2 1.60. With the exact route every one of them is at most
# 1.36x (inception_v3 1.32x; 0.92x at 1 thread). Its cost, 1 thread, thread CPU time medians,
# 224 px unless said: inception_v3 299 px b8 1003 vs 881 ms (1.14x; eager 1245), b1 137 vs
# 117 ms; resnet34 b8 587 vs 524 ms (eager 594); resnet18 b1 45.4 vs 36.5 (eager 48.8);
# googlenet b8 272 vs 254; ResNet-50 b8 (share 0.45, which this threshold leaves on oneDNN at
# 1.32x eager's error) ~9% (a probe patching the route in: 699 vs 639 ms).
_EXACT_MIN_SHARE = 0.6


def pays_off(model: nn.Module, report) -> bool:
    """Whether optimize() installs the conversion: a whole network's worth of fused convs (their
    CPU path wants channels_last) and no norm layer left for eager to run on channels_last."""
    fused = sum(len(paths) for pattern, paths in report.swapped.items() if "conv" in pattern)
    if fused < _MIN_FUSED_CONVS:
        return False
    return not any(isinstance(m, _EAGER_SLOWER_ON_CHANNELS_LAST) and not is_swapped(m)
                   for m in model.modules())


def install(model: nn.Module) -> None:
    """Register the two hooks on ``model`` (the root that optimize() returns)."""
    if _STATE in model.__dict__:
        return
    model.__dict__[_STATE] = {"ok": None, "why": ""}
    model.register_forward_pre_hook(channels_last_input, with_kwargs=True)
    model.register_forward_hook(input_layout_output)


def uninstall(model: nn.Module) -> None:
    """Remove what ``install`` added (revert())."""
    if model.__dict__.pop(_STATE, None) is None:
        return
    for hooks, fn, with_kwargs in ((model._forward_pre_hooks, channels_last_input,
                                    model._forward_pre_hooks_with_kwargs),
                                   (model._forward_hooks, input_layout_output,
                                    model._forward_hooks_with_kwargs)):
        for key in [k for k, h in hooks.items() if h is fn]:
            del hooks[key]
            with_kwargs.pop(key, None)


def enabled(model: nn.Module) -> bool | None:
    """True/False once decided by the first eval call on NCHW CPU input, None before (or when
    not installed)."""
    state = model.__dict__.get(_STATE)
    return None if state is None else state["ok"]


def _wants_conversion(module: nn.Module, x) -> bool:
    return (not module.training and isinstance(x, Tensor) and x.device.type == "cpu"
            and x.dim() == 4 and x.is_floating_point()
            and x.dtype in _mkldnn_conv.native_dtypes()
            and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last))


def _tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting()
            or torch.jit.is_tracing() or torch.jit.is_scripting())


def channels_last_input(module: nn.Module, args: tuple, kwargs: dict):
    if _tracing():  # first: nothing below is for dynamo to trace
        return None
    ids = getattr(_active, "ids", None)
    if ids is None:
        ids = _active.ids = set()
    ids.discard(id(module))  # left over from a call that raised
    _mkldnn_conv.exact_reductions_off(id(module))
    state = module.__dict__.get(_STATE)
    if state is None or state["ok"] is False or not args or not _wants_conversion(module, args[0]):
        return None
    if state["ok"] and small_convs_only(state, args[0]):
        return None  # decided before the copy below, which this call would throw away
    x = args[0].contiguous(memory_format=torch.channels_last)
    args = (x,) + tuple(args[1:])
    if state["ok"] is None:
        try:
            with torch.no_grad(), _recording_conv_inputs(module) as seen:
                module.forward(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the caller's layout
            state["ok"] = False
            state["why"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            report = module.__dict__.get("fastblocks_report")
            if report is not None:
                report.note("CPU: the model failed on a channels_last input "
                            f"({state['why']}); it runs in the caller's NCHW layout")
            return None
        state["ok"] = True
        # the largest convolution input per image, relative to the model input's size
        state["conv_numel_ratio"] = max(seen.sizes) / x[0].numel() if seen.sizes else None
        state["long_share"] = seen.long_macs / seen.macs if seen.macs else 0.0
        state["exact"] = state["long_share"] > _EXACT_MIN_SHARE
    if small_convs_only(state, x):
        return None
    ids.add(id(module))
    if state.get("exact"):
        _mkldnn_conv.exact_reductions_on(id(module))
    return args, kwargs


def small_convs_only(state: dict, x: Tensor) -> bool:
    """Whether the call with input ``x`` is a batch of one whose convolutions all read at
    most ``_ATEN_NATIVE_MAX_NUMEL`` values per image (scaled from the trial run), so NCHW is
    faster."""
    ratio = state.get("conv_numel_ratio")
    return bool(ratio) and x.shape[0] == 1 and ratio * x[0].numel() <= _ATEN_NATIVE_MAX_NUMEL


def exact_long_reductions(model: nn.Module) -> bool | None:
    """Whether the converted model runs its long kxk reductions exactly (module docstring);
    None before the first converted call."""
    state = model.__dict__.get(_STATE)
    return None if state is None else state.get("exact")


class _recording_conv_inputs:
    """Within: every nn.Conv2d under ``root`` (fused heads included) appends the number of
    values per image of its 4-d input to ``sizes`` and adds its multiply-adds per image to
    ``macs`` (those of a ``_mkldnn_conv.long_reduction`` to ``long_macs`` too); ``with ... as``
    gives the recorder."""

    def __init__(self, root: nn.Module) -> None:
        self.root, self.sizes, self.handles = root, [], []
        self.macs = self.long_macs = 0

    def _record(self, conv, args, out):
        if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
            self.sizes.append(args[0][0].numel())
            if isinstance(out, Tensor) and out.dim() == 4:
                w = conv.weight
                macs = out[0].numel() * w[0].numel()
                self.macs += macs
                self.long_macs += macs if _mkldnn_conv.long_reduction(w) else 0

    def __enter__(self) -> "_recording_conv_inputs":
        self.handles = [m.register_forward_hook(self._record)
                        for m in self.root.modules() if isinstance(m, nn.Conv2d)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def _to_nchw(t: Tensor) -> Tensor:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous()
    return t


def input_layout_output(module: nn.Module, args: tuple, output):
    if _tracing():
        return None
    ids = getattr(_active, "ids", None)
    if not ids or id(module) not in ids:
        return None
    ids.discard(id(module))
    _mkldnn_conv.exact_reductions_off(id(module))
    return pytree.tree_map_only(Tensor, _to_nchw, output)
