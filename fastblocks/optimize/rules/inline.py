"""Activations written inline in a block's forward (torch.fx; the block must trace).

Rewrites, in the block's graph:
- ``x * torch.sigmoid(x)`` (any operand order; ``x.sigmoid()``, ``torch.mul``) -> silu;
- ``x * F.hardsigmoid(x)``, ``x * F.relu6(x + 3) / 6``, ``x * (F.relu6(x + 3) / 6)`` -> hardswish;
- ``F.relu6(x + 3) / 6`` -> hardsigmoid (relu6 also as ``F.hardtanh(x, 0, 6)`` or a ReLU6 module);
each to one call of ``inline_activation`` (one pass: eager's F.silu/F.hardswish on CPU tensors,
fastblocks' kernel on others), and an activation (inline or one of those) applied to the output
of a fused conv -> BN chain whose BN output nothing else reads is moved into the chain's
epilogue. A block with such a rewrite is replaced by an ``InlineFused`` module sharing its
children and tensors (revert() puts the block back). One-op calls such as ``F.hardswish(x)``
alone are left as they are: already one pass.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...nn._activation_names import UNKNOWN
from .._inline_module import InlineFused
from .._rule import BlockRule
from .conv_bn_act import BatchNormFusedIntoConv, ConvBNActHead

_EAGER = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
          "hardsigmoid": F.hardsigmoid, "silu": F.silu}


def inline_activation(x: Tensor, activation: str) -> Tensor:
    """One activation pass: eager's on CPU tensors (faster there: rules/activation.py),
    fastblocks' kernel on others. x: any shape."""
    if x.device.type == "cpu":
        return _EAGER[activation](x)
    return ops.apply_activation(x, activation)


torch.fx.wrap("inline_activation")

_FN_ACT = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
           F.hardsigmoid: "hardsigmoid", F.silu: "silu"}
_METHOD_ACT = {"relu": "relu"}


def _fn(n, fns, methods=()):
    return isinstance(n, fx.Node) and ((n.op == "call_function" and n.target in fns)
                                       or (n.op == "call_method" and n.target in methods))


def _num(v, value) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and float(v) == value


class _Matcher:
    def __init__(self, block: nn.Module, ctx):
        self.block, self.ctx = block, ctx

    def unary(self, n):
        """(x, name) if n applies one activation to x, else None."""
        if not isinstance(n, fx.Node) or not n.args or set(n.kwargs) - {"inplace", "min_val", "max_val"}:
            return None
        if n.op == "call_function" and n.target in _FN_ACT and len(n.args) == 1:
            return n.args[0], _FN_ACT[n.target]
        if n.op == "call_method" and n.target in _METHOD_ACT and len(n.args) == 1:
            return n.args[0], _METHOD_ACT[n.target]
        if n.op == "call_function" and n.target is F.hardtanh:
            lo = n.kwargs.get("min_val", n.args[1] if len(n.args) > 1 else -1.0)
            hi = n.kwargs.get("max_val", n.args[2] if len(n.args) > 2 else 1.0)
            return (n.args[0], "relu6") if _num(lo, 0.0) and _num(hi, 6.0) else None
        if n.op == "call_module" and len(n.args) == 1 and not n.kwargs:
            name = self.ctx.activation(self.block.get_submodule(n.target))
            if name is not UNKNOWN and name is not None:
                return n.args[0], name
        return None

    def hardsigmoid(self, n):
        """(x, nodes) if n computes hardsigmoid(x)."""
        u = self.unary(n)
        if u and u[1] == "hardsigmoid":
            return u[0], {n}
        if _fn(n, (operator.truediv, torch.div), ("div",)) and len(n.args) == 2 and _num(n.args[1], 6.0):
            r = self.unary(n.args[0])
            if r and r[1] == "relu6" and _fn(r[0], (operator.add, torch.add), ("add",)):
                a, b = r[0].args[:2] if len(r[0].args) >= 2 else (None, None)
                x = a if _num(b, 3.0) else (b if _num(a, 3.0) else None)
                if isinstance(x, fx.Node):
                    return x, {n, n.args[0], r[0]}
        return None

    def composite(self, n):
        """(x, name, nodes) for x * sigmoid(x), x * hardsigmoid(x), x * relu6(x + 3) / 6."""
        if _fn(n, (operator.truediv, torch.div), ("div",)) and len(n.args) == 2 and _num(n.args[1], 6.0):
            m = n.args[0]
            if _fn(m, (operator.mul, torch.mul), ("mul",)) and len(m.args) == 2:
                for x, other in (m.args, m.args[::-1]):
                    r = self.unary(other)
                    if r and r[1] == "relu6" and _fn(r[0], (operator.add, torch.add), ("add",)):
                        a, b = r[0].args[:2]
                        if (a is x and _num(b, 3.0)) or (b is x and _num(a, 3.0)):
                            return x, "hardswish", {n, m, other, r[0]}
        if _fn(n, (operator.mul, torch.mul), ("mul",)) and len(n.args) == 2 and not n.kwargs:
            for x, other in (n.args, n.args[::-1]):
                if not isinstance(x, fx.Node):
                    continue
                if _fn(other, (torch.sigmoid, F.sigmoid), ("sigmoid",)) and other.args == (x,):
                    return x, "silu", {n, other}
                h = self.hardsigmoid(other)
                if h and h[0] is x:
                    return x, "hardswish", {n} | h[1]
        h = self.hardsigmoid(n)
        if h and len(h[1]) > 1:
            return h[0], "hardsigmoid", h[1]
        return None


def _closed(nodes: set, root, within: set | None = None) -> bool:
    """No node of the pattern but its root is read from outside ``within`` (default: the
    pattern's nodes)."""
    within = nodes if within is None else within
    return all(set(m.users) <= within for m in nodes if m is not root)


_REWRITTEN = "graph rewritten"


def single_graph(block: nn.Module, graphs):
    """The graph an inline rewrite of ``block`` may edit (``graphs[0]``), or None: the rewritten
    graph replaces forward, so only where it is one whatever the mode and flags; never for an
    nn.Sequential (no inline code; keep its indexing) or an already rewritten block."""
    if graphs is None or isinstance(block, InlineFused) or \
            type(block).forward is nn.Sequential.forward:
        return None
    if len({g.python_code("self").src for g in graphs}) != 1:
        return None
    return graphs[0]


def hand_over(block: nn.Module, graphs: list, ctx) -> None:
    """For a BlockRule running before InlineActivationRule that rewrote ``graphs[0]`` in place
    (every graph being the same code): this rule continues on that graph and builds the
    InlineFused replacement even if it finds nothing of its own."""
    graphs[0].lint()
    del graphs[1:]
    ctx.cache[(_REWRITTEN, id(block))] = True


class InlineActivationRule(BlockRule):
    pattern = "inline activation"

    def apply(self, block: nn.Module, graphs, ctx):
        graph = single_graph(block, graphs)
        if graph is None:
            return None
        match = _Matcher(block, ctx)
        changed = False
        dead: set = set()  # pattern nodes: pure activation arithmetic, erased once unread
        for n in list(graph.nodes):
            found = match.composite(n)
            if found is None or not _closed(found[2], n):
                u = match.unary(n)
                found = (u[0], u[1], {n}) if u else None
            if found is None:
                continue
            x, name, nodes = found
            if self._absorb(block, n, x, name, nodes, ctx):
                n.replace_all_uses_with(x)
                dead |= nodes
                changed = True
            elif len(nodes) > 1 and _closed(nodes, n):
                with graph.inserting_before(n):
                    new = graph.call_function(inline_activation, (x, name))
                n.replace_all_uses_with(new)
                dead |= nodes
                ctx.report.swap(f"inline {name} ({len(nodes)} ops -> 1)", ctx.path)
                changed = True
        # an earlier rule (rules/shuffle.py, squeeze_excite.py) may have rewritten this graph
        if not changed and not ctx.cache.pop((_REWRITTEN, id(block)), False):
            return None
        for n in reversed(list(graph.nodes)):
            if n in dead and not n.users:
                graph.erase_node(n)
        graph.lint()
        return InlineFused(block, graph)

    def _absorb(self, block, root, x, name, nodes, ctx) -> bool:
        """Move the activation into the epilogue of the fused chain producing x, if any."""
        if not (isinstance(x, fx.Node) and x.op == "call_module" and set(x.users) <= nodes
                and _closed(nodes, root)):
            return False
        bn = block.get_submodule(x.target)
        if not isinstance(bn, BatchNormFusedIntoConv) or len(x.args) != 1:
            return False
        c = x.args[0]
        if not (isinstance(c, fx.Node) and c.op == "call_module"):
            return False
        conv = block.get_submodule(c.target)
        if not isinstance(conv, ConvBNActHead) or conv.__dict__["_fb_bn"] is not bn \
                or conv.__dict__["_fb_activation"] is not None:
            return False
        conv.__dict__["_fb_activation"] = name
        ctx.report.move(ctx.child_path(c.target), "-> identity", f"-> {name} (inline)")
        return True
