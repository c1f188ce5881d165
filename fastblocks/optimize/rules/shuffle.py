"""Channel shuffles -> ``ops.channel_shuffle`` / ``ops.concat_shuffle`` (ShuffleNet v1/v2).

- ``nn.ChannelShuffle`` modules: class swapped in place to ``SwappedChannelShuffle``.
- Shuffles written inline in a traceable block's forward (torch.fx), in the reshape ->
  transpose -> reshape form of torchvision's ``shufflenetv2.channel_shuffle`` (the zoo's
  ``shufflenet_v2.channel_shuffle``, also used by ``shufflenet_v1``)::

      n, c, h, w = x.size()                       # or x.shape
      x = x.view(n, g, c // g, h, w)              # or reshape; c // g may be -1
      x = torch.transpose(x, 1, 2).contiguous()   # or x.transpose(1, 2); contiguous optional
      x = x.view(n, c, h, w)                      # or reshape; c may be -1

  -> one ``inline_channel_shuffle(x, g)``; and where ``x`` is ``torch.cat([a, b], 1)`` read by
  nothing but the shuffle -> ``inline_concat_shuffle(a, b, g)`` (no concatenated copy).
  The shape arguments are checked symbolically (they must be x's own sizes, split only in
  dim 1), so a view that moves other dims is not taken for a shuffle.

A shuffle that reads nothing but a fused conv -> BN -> act chain's output (ShuffleNet v1's
1x1 GConv -> BN -> ReLU -> shuffle; rules/conv_bn_act.py fused the chain) is then taken over
by that chain (rules/chain_shuffle.py, run after a block's children): in eval mode one
``ops.grouped_conv2d(..., activation, shuffle_groups)`` call with the BN folded writes the
shuffled output, and the shuffle found here (inline call or swapped module) becomes an
identity; its report entry moves to the chain's ("... -> relu -> channel shuffle (groups=3)").

CPU policy (as rules/activation.py, decided per call by the tensors): measured on the 2-core
dev VM (AMD EPYC, torch 2.13, OMP_NUM_THREADS=1, 30 (train: 10) interleaved calls, median, eager
= view/transpose/contiguous/view after torch.cat; in-process script):
- concat + shuffle, inference: ours 1.02-1.38x eager at batch 1 (ShuffleNetV2 116x28x28,
  232x14x14, 464x7x7), 1.84-2.52x at batch 32. Training (forward + backward): 0.77-1.45x at
  batch 1, 1.13-3.88x at batch 32. -> ours, except training below ``_CPU_MIN_NUMEL``.
- shuffle alone, inference: 0.89-0.93x at batch 1 (ShuffleNetV1 g3 60x28x28, 120x14x14,
  240x7x7), 1.16-1.29x at batch 32; training 0.69-0.74x at batch 1, 0.83-1.07x at batch 32.
  -> ours for inference from ``_CPU_MIN_NUMEL`` output elements up, eager otherwise.
  Re-measured (same VM, load ~2, 41 rounds in random order, median; ShuffleNetV1 g3 and g8
  shuffles of 60/120/240 and 96/192/384 channels at 28/14/7): inference NCHW 1.01-1.11x at
  batch 1, 0.99-1.31x at batch 8 (a tie either way); inference channels_last 1.80-2.72x at
  batch 1, 2.39-4.16x at batch 8 (eager's view/transpose/reshape copies through NCHW) -> ours
  for channels_last input in inference at any size; training (forward + backward) 0.69-0.78x
  at batch 1, 0.79-0.94x at batch 8 NCHW, 0.88-1.10x channels_last -> eager.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import Tensor, nn

from ... import ops
from ...ops._layout import is_channels_last
from ...ops.shuffle import _permute as _eager_shuffle  # reshape -> transpose -> reshape
from .._classswap import swap_class
from .._rule import BlockRule, Keep, ModuleRule, Swap
from .inline import _closed, hand_over, single_graph

# The smallest output (elements) for which the fused kernels won on CPU (module docstring):
# batch-1 ShuffleNet maps hold 12k-91k elements, batch-32 ones 376k-2.9M.
_CPU_MIN_NUMEL = 1 << 18


def _autograd(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def inline_channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """channel_shuffle(x, groups): ``ops.channel_shuffle``, or eager's view/transpose on CPU
    tensors where that measured faster (module docstring). x: (N, C, H, W)."""
    if x.device.type == "cpu" and (_autograd(x) or (x.numel() < _CPU_MIN_NUMEL
                                                    and not is_channels_last(x))):
        return _eager_shuffle(x, groups)
    return ops.channel_shuffle(x, groups)


def inline_concat_shuffle(a: Tensor, b: Tensor, groups: int) -> Tensor:
    """channel_shuffle(torch.cat([a, b], 1), groups): ``ops.concat_shuffle`` (one pass, no
    concatenated copy), or eager on CPU tensors where that measured faster (module docstring).
    a, b: (N, Ca, H, W), (N, Cb, H, W)."""
    if a.device.type == "cpu" and _autograd(a, b) and a.numel() + b.numel() < _CPU_MIN_NUMEL:
        return _eager_shuffle(torch.cat([a, b], 1), groups)
    return ops.concat_shuffle(a, b, groups)


torch.fx.wrap("inline_channel_shuffle")
torch.fx.wrap("inline_concat_shuffle")


class SwappedChannelShuffle(nn.ChannelShuffle):
    """An nn.ChannelShuffle (same object, class swapped) running ``inline_channel_shuffle``
    (fastblocks' kernel, eager where faster on CPU) on 4-d input. (N, C, *) -> same shape."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return inline_channel_shuffle(x, self.groups)


class ChannelShuffleModuleRule(ModuleRule):
    pattern = "channel shuffle"

    def apply(self, module: nn.Module, ctx):
        if type(module) is not nn.ChannelShuffle:
            return None
        try:
            swap_class(module, SwappedChannelShuffle)
        except TypeError:
            return Keep("ChannelShuffle: class cannot be swapped in place, kept eager")
        return Swap(module, f"channel shuffle (nn.ChannelShuffle, groups={module.groups})")


# ---- inline shuffles (fx) ----------------------------------------------------------------------

def _is(n, op, targets) -> bool:
    return isinstance(n, fx.Node) and n.op == op and n.target in targets


def _size_of(n, x, nodes: set):
    """i if n is ``x.size()[i]`` / ``x.shape[i]`` / ``x.size(i)``, else None (adds the nodes)."""
    if _is(n, "call_method", ("size",)) and len(n.args) == 2 and n.args[0] is x and isinstance(n.args[1], int):
        nodes.add(n)
        return n.args[1]
    if _is(n, "call_function", (operator.getitem,)) and isinstance(n.args[1], int):
        s = n.args[0]
        if (_is(s, "call_method", ("size",)) and s.args == (x,) and not s.kwargs) or \
                (_is(s, "call_function", (getattr,)) and s.args == (x, "shape")):
            nodes.update((n, s))
            return n.args[1]
    return None


def _view_args(n):
    if not _is(n, "call_method", ("view", "reshape")) or n.kwargs:
        return None
    args = n.args[1:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return args


def _match_shuffle(n):
    """(x, groups, tensor nodes, size nodes) if n is the last view of an inline shuffle of x
    (size nodes: the ``x.size()``/``x.shape`` arithmetic the views read, which other code may
    read too)."""
    out = _view_args(n)
    if out is None or len(out) != 4:
        return None
    t = n.args[0]
    nodes = {n}
    if _is(t, "call_method", ("contiguous",)) and len(t.args) == 1:
        nodes.add(t)
        t = t.args[0]
    if not ((_is(t, "call_function", (torch.transpose,)) or _is(t, "call_method", ("transpose",)))
            and tuple(t.args[1:]) in ((1, 2), (2, 1)) and not t.kwargs):
        return None
    nodes.add(t)
    v = t.args[0]
    split = _view_args(v)
    if split is None or len(split) != 5:
        return None
    nodes.add(v)
    sizes: set = set()
    x, g = v.args[0], split[1]
    if not isinstance(x, fx.Node) or not isinstance(g, int) or isinstance(g, bool) or g <= 0:
        return None
    # the split view: (N, g, C // g or -1, H, W) with N, H, W x's own sizes
    for pos, dim in ((0, 0), (3, 2), (4, 3)):
        if _size_of(split[pos], x, sizes) != dim:
            return None
    k = split[2]
    if not (k == -1 or (_is(k, "call_function", (operator.floordiv,)) and k.args[1] == g
                        and _size_of(k.args[0], x, sizes) == 1)):
        return None
    if k != -1:
        sizes.add(k)
    # the merging view: (N, C or -1, H, W)
    for pos, dim in ((0, 0), (2, 2), (3, 3)):
        if _size_of(out[pos], x, sizes) != dim:
            return None
    if not (out[1] == -1 or _size_of(out[1], x, sizes) == 1):
        return None
    return x, g, nodes, sizes


def _cat_pair(x, nodes: set, sizes: set):
    """(a, b) if x is ``torch.cat([a, b], 1)`` read only by the shuffle (its size arithmetic
    included, which nothing else may read: the cat would stay alive for it)."""
    both = nodes | sizes
    if not _is(x, "call_function", (torch.cat,)) or not set(x.users) <= both \
            or not _closed(sizes, None, within=both):
        return None
    seq = x.args[0] if x.args else x.kwargs.get("tensors")
    dim = x.args[1] if len(x.args) > 1 else x.kwargs.get("dim", 0)
    if not isinstance(seq, (tuple, list)) or len(seq) != 2 or dim != 1:
        return None
    if set(x.kwargs) - {"dim", "tensors"}:
        return None
    return tuple(seq)


class InlineShuffleRule(BlockRule):
    """Rewrites inline shuffles in ``graphs[0]`` (only where every traced graph is the same
    code) and leaves the graph for rules/inline.py, which builds the InlineFused module."""
    pattern = "inline channel shuffle"

    def apply(self, block: nn.Module, graphs, ctx):
        graph = single_graph(block, graphs)
        if graph is None:
            return None
        changed = False
        for n in list(graph.nodes):
            found = _match_shuffle(n)
            if found is None:
                continue
            x, g, nodes, sizes = found
            if not _closed(nodes, n):
                continue
            pair = _cat_pair(x, nodes, sizes)
            with graph.inserting_before(n):
                if pair is not None:
                    new = graph.call_function(inline_concat_shuffle, (*pair, g))
                    nodes.add(x)
                    what = f"inline concat + channel shuffle (groups={g})"
                else:
                    new = graph.call_function(inline_channel_shuffle, (x, g))
                    what = f"inline channel shuffle (groups={g})"
            n.replace_all_uses_with(new)
            for m in sorted(nodes | sizes, key=_order(graph), reverse=True):
                if not m.users:
                    graph.erase_node(m)
            ctx.report.swap(what, ctx.path)
            changed = True
        if changed:
            hand_over(block, graphs, ctx)
        return None


def _order(graph):
    index = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: index[n]
