"""An inverted-residual block (MobileNetV2's bottleneck, Sandler et al., CVPR 2018) whose
three conv -> BN (-> act) chains are already fused runs as one ``ops.inverted_residual`` call
in CPU inference, so its expanded tensor stays in cache (ops/inverted_residual.py).

A LATE_BLOCK_RULE: it runs after rules/conv_bn_act.py fused the chains. The pattern, in every
torch.fx graph of the block's own forward (children as leaves):

    out = C(x)   or   out = C(x) + x   (or x + C(x))

where x is the block's only input and C a run of child calls, each called once and read only
by the next, each a fused-chain module or an nn.Sequential (forward unchanged, possibly nested,
e.g. torchvision's Conv2dNormActivation) of them, used once in the model. Flattened, C must be
    [expand head, its BN, its act,] depthwise head, its BN[, its act], project head, its BN
    [, modules that are identities in eval mode: stochastic depth, timm's DropPath, dropout]
with the expand a 1x1 ungrouped stride-1 unpadded conv, the depthwise a conv with groups ==
in == out channels (zero padding, no TF "SAME"), the project a 1x1 ungrouped stride-1 conv
without activation. It matches the zoo's MobileNetV2 (InvertedResidual), MnasNet
(MNASNetBlock), MobileNetV3 blocks without SE (InvertedResidualV3) and EfficientNet-Lite's
MBConv (no SE; stochastic depth on the residual branch); the block itself must not be an
nn.Sequential (its own children would then be the ones matched).

The block's class becomes ``FusedInvertedResidual`` (parameters, buffers, children and
state_dict keys unchanged; revert() restores the original class). Its forward runs the fused
op only for eval mode, no autograd recording, a 4-d float32 CPU input that is channels_last
(what _cpu_layout.py feeds an optimized model in eval) or under torch.compile from a batch of
2 (the block converts its input to channels_last, so the blocks after it get channels_last;
inductor folds the BN arithmetic into constants with freezing; see _MIN_COMPILED_POSITIONS);
everything else (training, gradients, CUDA, NCHW in eager, other dtypes, torch.export) runs
the original class's forward, i.e. the per-chain fused modules.
"""
from __future__ import annotations

import operator

import torch
from torch import Tensor, nn

from ... import ops
from ...nn.conv_bn_act import _folded
from ...ops._activation_codes import activation_code
from ...ops._layout import is_channels_last
from ...ops.inverted_residual import _impl as _ir_impl
from ...ops.inverted_residual import PACK_AVAILABLE, _ir_op, can_pack, pack_pointwise
from .._classswap import original_class, swap_class
from .._inline_module import InlineFused
from .._rule import BlockRule
from .chain_shuffle import _owns
from .conv_bn_act import ActivationFusedIntoConv, BatchNormFusedIntoConv, ConvBNActHead

_IDENTITIES = (BatchNormFusedIntoConv, ActivationFusedIntoConv)

# Modules that return their input unchanged in eval mode, accepted after the project conv's BN
# (the residual branch's regularizer: `x + stochastic_depth(block(x))` in EfficientNet(-Lite)
# and torchvision's MBConv, `x + drop_path(...)` in timm): the fused block runs only while each
# of them is in eval mode. Matched by exact class, so a subclass with its own forward is not.
_EVAL_IDENTITY_TYPES = (nn.Identity, nn.Dropout, nn.Dropout2d)
_EVAL_IDENTITY_NAMES = {"fastblocks.models.efficientnet.StochasticDepth",
                        "torchvision.ops.stochastic_depth.StochasticDepth",
                        "timm.layers.drop.DropPath", "timm.models.layers.drop.DropPath"}


def _eval_identity(m: nn.Module) -> bool:
    t = type(m)
    return t in _EVAL_IDENTITY_TYPES or f"{t.__module__}.{t.__qualname__}" in _EVAL_IDENTITY_NAMES


class FusedInvertedResidual(nn.Module):
    """A block proven to compute [expand ->] depthwise -> project [+ x] from fused chains
    (module docstring). ``_fb_ir``: (expand head or None, depthwise head, project head,
    residual, the modules after the project's BN that are identities in eval mode)."""

    def forward(self, x: Tensor, *args, **kwargs):
        expand, dw, project, residual, tail = self.__dict__["_fb_ir"]
        if args or kwargs or any(m.training for m in tail) \
                or not _fast(self, x, expand, dw, project):
            return original_class(self).forward(self, x, *args, **kwargs)
        folded = [(None, None) if h is None else _folded(h, h, h.__dict__["_fb_bn"])
                  for h in (expand, dw, project)]
        if torch.compiler.is_compiling():
            # inductor folds the BN arithmetic into constants (freezing) and runs the fused op
            # on channels_last, the layout it hands on to the next block (see _fast); the
            # registered op straight away (the block's shapes were checked when it was matched)
            # (the 1x1 weights packed in the graph: freezing folds that into constants)
            return _ir_op(x.contiguous(memory_format=torch.channels_last),
                          *_kernel_args(folded, dw, expand, residual, packed=PACK_AVAILABLE))
        # eager: the op's argument checks once per set of folded weights (a fold is cached on
        # its head until a parameter or buffer changes), then the kernel directly on 1x1
        # weights packed once with them; the checked call cost ~80 us a block (batch 1, 1
        # thread, the EPYC VM)
        key = tuple(id(w) for w, _ in folded)
        cached = self.__dict__.get("_fb_ir_args")
        if cached is None or cached[0] != key:
            _call(x, folded, dw, expand, residual)  # validates, raises on a bad block
            args = _kernel_args(folded, dw, expand, residual, packed=can_pack(x))
            self.__dict__["_fb_ir_args"] = cached = (key, args)
        return _ir_impl(x, *cached[1])


def _kernel_args(folded, dw, expand, residual, packed: bool) -> tuple:
    """The op's arguments; ``packed``: with the 1x1 weights packed for its GEMM."""
    (we, be), (wd, bd), (wp, bp) = folded
    args = (we, be, wd, bd, wp, bp, list(dw.stride), list(dw.padding), list(dw.dilation),
            0 if expand is None else activation_code(expand.__dict__["_fb_activation"]),
            activation_code(dw.__dict__["_fb_activation"]), residual)
    if not packed:
        return args
    return args + (None if we is None else pack_pointwise(we, be), pack_pointwise(wp, bp))


def _call(x, folded, dw, expand, residual) -> Tensor:
    (we, be), (wd, bd), (wp, bp) = folded
    return ops.inverted_residual(
        x, we, be, wd, bd, wp, bp, stride=dw.stride, padding=dw.padding, dilation=dw.dilation,
        expand_activation=None if expand is None else expand.__dict__["_fb_activation"],
        dw_activation=dw.__dict__["_fb_activation"], residual=residual)


# Every matched block runs fused, whatever its map size. The first kernel ran its GEMMs per
# image, small at 14x14 and 7x7 (M = 196, 49), and lost to the per-chain path there (7x7 blocks
# 0.74-0.80x, zoo mnasnet1_0 0.84x), so blocks under 28x28 kept the per-chain path. With small
# maps run as groups of whole images (csrc/cpu/inverted_residual.cpp, kSmallMap), fusing every
# block against fusing only those from 28x28, whole zoo models, thread CPU time, 1 thread,
# interleaved medians, the loaded 2-core EPYC VM: mobilenet_v2 b8 77.9 vs 80.2 ms, b1 13.5 vs
# 15.3; mnasnet1_0 b8 80.4 vs 82.8, b1 14.4 vs 15.3; mobilenet_v3_large b8 73.4 vs 72.9, b1
# 13.6 vs 15.0.


# Under torch.compile (freezing) inductor's convolutions run on prepacked weights; the fused
# kernel's GEMMs packed theirs on every call when this rule was set (freezing now folds
# pack_pointwise into constants), and at batch 1 inductor's per-layer tensors stay in L3 (the
# fused kernel saves little memory traffic there). Zoo mobilenet_v2, thread CPU time, 1 thread,
# the EPYC VM, compile of the optimized model against compile of the plain one: every block
# fused, b8 1.07x, b1 0.89x; blocks of N * H * W >= 28 * 28 fused, b8 1.10-1.14x, b1 0.93x; none
# fused (the per-chain path traced), b8 1.00x, b1 0.97-0.99x. So under compile a block runs
# fused from a batch of 2 and N * H * W >= 28 * 28 (the 7x7 blocks at batch 8 take the
# per-chain path). With the packing folded, b8: every block 59.9 ms, this rule 60.0 (same run,
# 15 interleaved reps): kept.
_MIN_COMPILED_POSITIONS = 28 * 28


def _fast(block, x, *heads) -> bool:
    if block.training or not isinstance(x, Tensor) or x.device.type != "cpu" \
            or x.dtype != torch.float32 or x.dim() != 4 or torch.compiler.is_exporting() \
            or not (is_channels_last(x) or torch.compiler.is_compiling()):
        return False
    if torch.compiler.is_compiling() and (
            x.shape[0] < 2 or x.shape[0] * x.shape[-2] * x.shape[-1] < _MIN_COMPILED_POSITIONS):
        return False
    for h in heads:
        if h is None:
            continue
        bn = h.__dict__["_fb_bn"]
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return False
        if torch.is_grad_enabled() and any(p is not None and p.requires_grad
                                           for p in (h.weight, h.bias, bn.weight, bn.bias)):
            return False
    return not (torch.is_grad_enabled() and x.requires_grad)


def _flatten(module: nn.Module, ctx, out: list) -> bool:
    if ctx.shared(module):
        return False
    if type(module) is ConvBNActHead or isinstance(module, _IDENTITIES) or _eval_identity(module):
        out.append(module)
        return True
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return all(_flatten(m, ctx, out) for m in module._modules.values() if m is not None)
    return False


def _heads(leaves: list):
    """[head, ...] if ``leaves`` are heads each followed by only its own BN (and act)."""
    heads, i = [], 0
    while i < len(leaves):
        h = leaves[i]
        if type(h) is not ConvBNActHead:
            return None
        j = i + 1
        while j < len(leaves) and isinstance(leaves[j], _IDENTITIES):
            j += 1
        if not _owns(h, leaves[i + 1:j]):
            return None
        heads.append(h)
        i = j
    return heads


def _pointwise(h) -> bool:
    return (h.kernel_size == (1, 1) and h.groups == 1 and h.stride == (1, 1)
            and h.padding in ((0, 0), 0) and h.dilation == (1, 1))


def _plain(h) -> bool:
    return not h.__dict__["_fb_same_pad"] and h.padding_mode == "zeros"


def _match(block, graph, ctx):
    """(expand, dw, project, residual) if ``graph`` is the pattern, else None."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1 or len(outputs[0].args) != 1:
        return None
    x, out = inputs[0], outputs[0].args[0]
    residual = False
    if getattr(out, "op", None) == "call_function" and out.target in (operator.add, torch.add) \
            and len(out.args) == 2 and not out.kwargs:
        a, b = out.args
        if a is x:
            out = b
        elif b is x:
            out = a
        else:
            return None
        residual = True
    calls: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    chain, n = [], out
    while n is not x:
        if getattr(n, "op", None) != "call_module" or calls[n.target] != 1 \
                or len(n.args) != 1 or n.kwargs or len(n.users) != 1:
            return None
        chain.append(n.target)
        n = n.args[0]
    # every node is accounted for: x, the calls, the add, the output
    if len(nodes) != len(chain) + 2 + residual:
        return None
    leaves: list = []
    for target in reversed(chain):
        if not _flatten(block.get_submodule(target), ctx, leaves):
            return None
    tail = []
    while leaves and _eval_identity(leaves[-1]):
        tail.insert(0, leaves.pop())
    heads = _heads(leaves)
    if heads is None or len(heads) not in (2, 3):
        return None
    expand = heads[0] if len(heads) == 3 else None
    dw, project = heads[-2], heads[-1]
    c = dw.in_channels
    if not (dw.groups == c == dw.out_channels and c > 1 and _plain(dw)
            and isinstance(dw.padding, tuple) and _pointwise(project) and _plain(project)
            and project.__dict__["_fb_activation"] is None and project.in_channels == c):
        return None
    if expand is not None and not (_pointwise(expand) and _plain(expand)
                                   and expand.out_channels == c):
        return None
    return expand, dw, project, residual, tuple(tail)


class ChainInvertedResidualRule(BlockRule):
    pattern = "inverted residual: expand -> depthwise -> project (-> + x)"

    def apply(self, block: nn.Module, graphs, ctx) -> None:
        if not graphs or isinstance(block, (nn.Sequential, InlineFused)) or ctx.shared(block):
            return
        found = [_match(block, g, ctx) for g in graphs]
        if found[0] is None or any(f is None or [id(m) for m in f[:3] + f[4]]
                                   != [id(m) for m in found[0][:3] + found[0][4]]
                                   or f[3] != found[0][3] for f in found[1:]):
            return
        try:
            swap_class(block, FusedInvertedResidual, _fb_ir=found[0])
        except (TypeError, ValueError):
            return
        what = "inverted residual (" + ("expand -> " if found[0][0] is not None else "") \
            + "depthwise -> project" + (" -> + x" if found[0][3] else "") + ")"
        ctx.report.swap(what, ctx.path or "<model>")
