"""A fused conv -> BN -> activation chain read only by a channel shuffle takes the shuffle over
(ShuffleNet v1's 1x1 GConv -> BN -> ReLU -> shuffle, Zhang et al., CVPR 2018, Fig. 2).

Runs after a block's children were visited (a LATE_BLOCK_RULE), when rules/conv_bn_act.py
has fused the chains and rules/shuffle.py has swapped the shuffles, so it also sees a chain
inside a child (the zoo's ShuffleNet v1 unit calls ``self.compress``, an nn.Sequential(conv,
BN, ReLU), then shuffles inline). In the block's torch.fx graph a shuffle is
- a call of ``inline_channel_shuffle(x, g)`` (rules/shuffle.py's rewrite of an inline
  view -> transpose -> view shuffle; the block is then an InlineFused), or
- a call of an nn.ChannelShuffle module (swapped or not) used once in the whole model,
and ``x`` the chain's output: the head's node followed only by its fused BN/activation
(each output read by the next alone), or a child container (an nn.Sequential, possibly
nested, or a TF-"SAME" padding block) whose output is that of the last chain in it, used
once in the model. Every graph of the block must show it.

Then the head becomes a ``ShuffledConvBNActHead`` (class swapped again; ``_fb_shuffle_groups``
added) and the shuffle an identity: the inline call is dropped from the InlineFused graph, a
shuffle module becomes a ``ShuffleFusedIntoConv``. Parameters, buffers and state_dict keys
do not change; revert() restores the original classes (and block) exactly. The report files
the chain under its own pattern, e.g. "grouped conv -> BN -> relu -> channel shuffle
(groups=3)", and withdraws the shuffle's own entry.

How the head runs: see ``ShuffledConvBNActHead`` (eval without autograd: one
``ops.grouped_conv2d(x, folded weight, folded bias, groups, activation, shuffle_groups)``;
otherwise the chain's exact BN path, then the shuffle), and ``_fused_on_cpu`` for the CPU
policy (on CPU an optimized model in eval mode runs NCHW input channels_last inside,
_cpu_layout.py, so there the chain runs as conv_bias_act, then ops.channel_shuffle).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ...nn.conv_bn_act import conv_bn_act_forward
from ...nn.shuffle import ChannelShuffle as FastChannelShuffle
from ...ops._layout import is_channels_last
from ...ops.conv_bn_act import _small_pointwise
from .._classswap import is_swapped, reswap_class, swap_class
from .._inline_module import InlineFused
from .._padding import tf_same_padding
from .._rule import BlockRule
from .conv_bn_act import (ActivationFusedIntoConv, BatchNormFusedIntoConv, ConvBNActHead,
                          TFSamePaddedChainBlock)
from .shuffle import SwappedChannelShuffle, inline_channel_shuffle


def _fused_on_cpu(x: Tensor, conv: nn.Conv2d) -> bool:
    """Whether the one-call path runs for CPU input ``x`` in inference: for an ungrouped conv
    always (one conv_bias_act with the output channels of the folded weight permuted: no
    shuffle pass at all); for a grouped one (grouped_conv2d: ATen's convolution, then one pass
    adding nothing but the activation and the shuffled write) unless the output is
    channels_last and ``ops.conv_bias_act`` would run oneDNN's packed-weight primitive with
    the activation as a post-op (kxk kernels, 1x1 from 8 M multiply-adds: ops/conv_bn_act.py
    ``_small_pointwise``): then the folded chain as conv_bias_act, then ``ops.channel_shuffle``.

    Measured on the 2-core dev VM (AMD EPYC, torch 2.13, OMP_NUM_THREADS=1, fp32, eval, no_grad,
    load ~2; the 10 grouped compress layers of ShuffleNet v1 g=3 and g=8, 1x1 conv -> BN ->
    ReLU -> shuffle; 41 interleaved rounds in random order, median; eager = the zoo's
    nn.Sequential(conv, BN, ReLU), then its view/transpose/reshape shuffle). Speed-up over
    eager of the op calls, median [range] over the layers:
    - batch 1, NCHW: grouped_conv2d 1.17x [1.11-1.21], conv_bias_act + channel_shuffle 1.10x
      [1.04-1.14]; grouped_conv2d faster on 10 of 10.
    - batch 1, channels_last (all under 8 M multiply-adds: conv_bias_act is ATen's GEMM there):
      grouped_conv2d 1.23x [1.17-1.41], conv_bias_act + channel_shuffle 1.17x [1.08-1.32];
      grouped_conv2d faster on 10 of 10.
    - batch 8, channels_last (all from 29 M multiply-adds: oneDNN): grouped_conv2d 1.18x
      [1.10-1.33], conv_bias_act + channel_shuffle 1.67x [1.47-1.98], faster on 10 of 10.
    - batch 8, NCHW: grouped_conv2d 1.11x [1.07-1.16], conv_bias_act + channel_shuffle 1.08x
      [1.01-1.16]; grouped_conv2d faster on 8 of 10.
    The ungrouped stage-2 layers (24 -> 60/96 at 56x56) with the permuted weight: 1.21-1.48x
    NCHW, 1.74-1.89x channels_last at batch 1. Whole models, in-process against optimize()
    without this rule (224x224, 15-41 rounds): ShuffleNet v1 g3 batch 1 channels_last 1.25x
    eager (without: 1.08-1.16x), batch 8 NCHW 1.71x (1.48x), channels_last 1.45x (1.21x); g8
    batch 8 NCHW 1.52x (1.42x), channels_last 1.41x (1.34x); batch 1 g8 within noise (1.16x vs
    1.18x NCHW, 1.05x vs 1.03x channels_last).
    """
    if conv.groups == 1 or not (is_channels_last(x) or is_channels_last(conv.weight)):
        return True
    return conv.kernel_size == (1, 1) and _small_pointwise(x, conv.weight, conv.stride)


class ShuffledConvBNActHead(ConvBNActHead):
    """A ConvBNActHead whose output is also channel-shuffled in ``_fb_shuffle_groups`` groups
    (the shuffle that followed the chain became an identity).

    Eval mode without autograd: one ``ops.grouped_conv2d`` call with the BN folded writes the
    activated output in shuffled order (an ungrouped conv: its folded weight's output
    channels permuted; on CPU where ``_fused_on_cpu`` says so, else the folded chain, then
    ``inline_channel_shuffle``). Training or autograd: the chain's exact
    BatchNorm path (running statistics as nn.BatchNorm2d), then ``inline_channel_shuffle``.
    Shapes: (N, C_in, H, W) -> (N, C_out, OH, OW), channels shuffled; an unbatched (C_in, H, W)
    input gets ``F.channel_shuffle`` of its (C_out, OH, OW) output, as nn.ChannelShuffle does.
    """

    def forward(self, x: Tensor) -> Tensor:
        d = self.__dict__
        bn, act, groups = d["_fb_bn"], d["_fb_activation"], d["_fb_shuffle_groups"]
        padding = None
        if d["_fb_same_pad"]:
            x, padding = tf_same_padding(x, self)
        if x.dim() != 4:
            return F.channel_shuffle(conv_bn_act_forward(self, x, self, bn, act, padding), groups)
        if x.device.type == "cpu" and not _fused_on_cpu(x, self):
            return inline_channel_shuffle(conv_bn_act_forward(self, x, self, bn, act, padding),
                                          groups)
        return conv_bn_act_forward(self, x, self, bn, act, padding, groups, inline_channel_shuffle)

    def extra_repr(self) -> str:
        return super().extra_repr() + f" -> channel shuffle ({self.__dict__['_fb_shuffle_groups']})"


class ShuffleFusedIntoConv(nn.ChannelShuffle):
    """An nn.ChannelShuffle whose work the ShuffledConvBNActHead before it does: returns its
    input."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + ", fused into the conv before it"


_IDENTITIES = (BatchNormFusedIntoConv, ActivationFusedIntoConv)
_SHUFFLES = (nn.ChannelShuffle, SwappedChannelShuffle, FastChannelShuffle)


def _head_in(module: nn.Module, ctx):
    """(head, path below ``module``) if ``module``'s output is its last fused chain's output,
    else None: a TF-"SAME" chain block, or an nn.Sequential ending in a chain (its head, then
    only that head's fused BN/activation) or in such a container."""
    if ctx.shared(module):
        return None
    if isinstance(module, TFSamePaddedChainBlock):
        name = module.__dict__["_fb_head"]
        head = module._modules[name]
        return (head, name) if type(head) is ConvBNActHead else None
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return None
    names = [k for k, v in module._modules.items() if v is not None]
    skipped = []
    for name in reversed(names):
        m = module._modules[name]
        if isinstance(m, _IDENTITIES):
            skipped.append(m)
            continue
        if type(m) is ConvBNActHead:
            return (m, name) if _owns(m, skipped) else None
        if skipped:
            return None
        found = _head_in(m, ctx)
        return None if found is None else (found[0], f"{name}.{found[1]}")
    return None


def _owns(head: ConvBNActHead, skipped: list) -> bool:
    """The fused modules between the head and the output are its own: its BN (always there:
    a chain is fused only where its BN reads the conv) and at most its activation."""
    bns = [m for m in skipped if isinstance(m, BatchNormFusedIntoConv)]
    return len(bns) == 1 and bns[0] is head.__dict__["_fb_bn"] and len(skipped) <= 2


def _head_of(block: nn.Module, x, calls: dict, ctx):
    """(head, path below ``block``) if graph node ``x`` (read by the shuffle alone) is a fused
    chain's output, else None (module docstring)."""
    skipped = []
    n = x
    while True:
        if not (n.op == "call_module" and len(n.users) == 1 and calls[n.target] == 1):
            return None
        m = block.get_submodule(n.target)
        if type(m) is ConvBNActHead:
            return (m, n.target) if _owns(m, skipped) else None
        if isinstance(m, _IDENTITIES):
            if len(n.args) != 1 or n.kwargs or not hasattr(n.args[0], "op"):
                return None
            skipped.append(m)
            n = n.args[0]
            continue
        if skipped:
            return None
        found = _head_in(m, ctx)
        return None if found is None else (found[0], f"{n.target}.{found[1]}")


def _shuffles(block: nn.Module, graph, ctx):
    """(shuffle node, x node, groups, shuffle module or None, head, head path) of each shuffle
    in ``graph`` that reads a fused chain's output alone."""
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    found = []
    for n in graph.nodes:
        module = None
        if n.op == "call_function" and n.target is inline_channel_shuffle and not n.kwargs \
                and len(n.args) == 2:
            x, groups = n.args
        elif n.op == "call_module" and len(n.args) == 1 and not n.kwargs:
            module = block.get_submodule(n.target)
            if type(module) not in _SHUFFLES or calls[n.target] != 1 or ctx.shared(module):
                continue
            x, groups = n.args[0], module.groups
        else:
            continue
        if not hasattr(x, "op") or not isinstance(groups, int):
            continue
        chain = _head_of(block, x, calls, ctx)
        if chain is None or chain[0].out_channels % groups:
            continue
        found.append((n, x, groups, module) + chain)
    return found


class ChainShuffleRule(BlockRule):
    pattern = "conv -> BN -> act -> channel shuffle"

    def apply(self, block: nn.Module, graphs, ctx) -> None:
        if isinstance(block, InlineFused):
            graph = block.__dict__.get("_fb_graph")
            graphs = [] if graph is None else [graph]
        if not graphs:
            return
        found = _shuffles(block, graphs[0], ctx)
        # every graph (training mode, flags) must show the same shuffle of the same chain
        others = [{(f[3] is None, f[2], id(f[4])) for f in _shuffles(block, g, ctx)}
                  for g in graphs[1:]]
        rewritten = False
        for node, x, groups, module, head, where in found:
            if any((module is None, groups, id(head)) not in o for o in others):
                continue
            if module is None and not isinstance(block, InlineFused):
                continue  # an inline call only InlineFused runs from its graph
            reswap_class(head, ShuffledConvBNActHead, _fb_shuffle_groups=groups)
            head.__dict__.pop("_fold_cache", None)
            if module is None:
                node.replace_all_uses_with(x)
                graphs[0].erase_node(node)
                rewritten = True
                ctx.report.unswap(f"inline channel shuffle (groups={groups})",
                                  ctx.path or "<model>")
            else:
                if is_swapped(module):
                    reswap_class(module, ShuffleFusedIntoConv)
                    ctx.report.unswap(f"channel shuffle (nn.ChannelShuffle, groups={groups})",
                                      ctx.child_path(node.target))
                else:
                    swap_class(module, ShuffleFusedIntoConv)
                ctx.consume(module)
            ctx.report.move(ctx.child_path(where), "", f" -> channel shuffle (groups={groups})")
        if rewritten:
            graphs[0].lint()
            block.set_graph(graphs[0])
