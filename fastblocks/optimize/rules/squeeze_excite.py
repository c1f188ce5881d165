"""Squeeze-and-excitation blocks -> ``SwappedSqueezeExcite`` (``fastblocks.nn.SqueezeExcite``:
one fused op, ``ops.squeeze_excite``).

Matches what ``SqueezeExcite.from_module`` reads structurally (torchvision's and the zoo's
SqueezeExcitation, timm's SqueezeExcite/SEModule, Hugging Face's EfficientNet SE layer,
SE-ResNet blocks with a Sequential(FC, act, FC, gate)), and swaps it only once its behaviour is
proven: a copy of the block, in train and in eval mode, must give the output and input
gradient of the SE composition ``x * gate(fc2(act(fc1(mean(x)))))`` on a float64 probe input
(torch.testing.assert_close), so a class with the right children but another forward (an
extra residual, a different pooling) stays eager. The new module holds the same children under
the same names: state_dict keys and tensors are unchanged.

Also, through torch.fx, SE written inline in a traceable block's forward: ``x * gate(fc2(act(
fc1(pool(x)))))`` with pool ``F.adaptive_avg_pool2d(x, 1)``, an AdaptiveAvgPool2d(1) child or
``x.mean((2, 3), keepdim=True)``, fc1/fc2 1x1 Conv2d children (each called once, used nowhere
else), act a module or function computing relu/relu6/silu/hardswish/hardsigmoid (or none), gate
sigmoid/hardsigmoid (function, method or module) -> one ``inline_squeeze_excite`` call.

CPU policy (as rules/activation.py, decided per call): the fused op, except fp16/bf16 CPU
tensors without an autograd graph, which run the eager composition. Measured with
``fastblocks bench ops --op squeeze_excite --providers eager,compile,cpu --threads 1`` on the
2-core AMD EPYC dev VM (shared with other builds, load average 3-5; torch 2.13; in-process
interleaved medians; eager = ``ops.squeeze_excite.reference_squeeze_excite``) over every SE
shape of MobileNetV3-Large (6), EfficientNet-B0 (10) and SE-ResNet-50 (4) at batch 1 and 32,
NCHW and channels_last, fp32 (bench/results/cpu-amd-epyc-1t/se-after-*.json; se-before-* is
the kernel before the hand MLP and streamed stores): inference geomean 1.44x eager (per net
1.63x / 1.28x / 1.58x; batch 1 1.36x, batch 32 1.51x; lowest EfficientNet-B0 at batch 1 NCHW,
1.06x, where the ~15 us of Python-side validation and op dispatch weigh on 50-90 us calls),
no case below 0.98x; training (forward + backward) geomean 1.86x (per net 1.79x / 1.86x /
1.97x), no case below 1.14x. Before, inference was 1.29x (0.65x at worst) and ran eager here.
fp16/bf16 inference was not benchmarked through the harness: a dev check at batch 32 had
bf16 32x672x7x7 at 0.37x eager, so it keeps eager.
"""
from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...nn.squeeze_excite import SqueezeExcite, _fc_ok
from ...ops.squeeze_excite import reference_squeeze_excite
from .._rule import BlockRule, Keep, ModuleRule, Swap
from .inline import _Matcher, hand_over, single_graph


# CPU inference in these dtypes runs the eager composition (module docstring)
_CPU_EAGER_INFERENCE_DTYPES = (torch.float16, torch.bfloat16)


def inline_squeeze_excite(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                          b2: Tensor | None, activation: str, gate: str) -> Tensor:
    """``ops.squeeze_excite`` (same arguments), or its eager composition for fp16/bf16 CPU
    tensors when no autograd graph is recorded (module docstring)."""
    if x.device.type == "cpu" and x.dtype in _CPU_EAGER_INFERENCE_DTYPES and not (
            torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, w1, b1, w2, b2))):
        return reference_squeeze_excite(x, w1, b1, w2, b2, activation, gate)
    return ops.squeeze_excite(x, w1, b1, w2, b2, activation, gate)


torch.fx.wrap("inline_squeeze_excite")


class SwappedSqueezeExcite(SqueezeExcite):
    """fastblocks.nn.SqueezeExcite with the CPU policy of the module docstring.
    (N, C, H, W) or (C, H, W) -> same shape, dtype and layout."""

    def forward(self, x: Tensor) -> Tensor:
        fc1, fc2 = self._fc(self._fc_paths[0]), self._fc(self._fc_paths[1])
        return inline_squeeze_excite(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                                     self.act_name, self.gate_name)


def _run(m: nn.Module, x: Tensor):
    x = x.clone().requires_grad_(True)
    y = m(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


def _behaves_as_se(module: nn.Module, new: SqueezeExcite) -> bool:
    """Whether ``module`` computes the SE composition ``new`` stands for (on copies, float64)."""
    fc1 = new._fc(new._fc_paths[0])
    channels = fc1.weight.shape[1]
    theirs = copy.deepcopy(module).double()
    fc1, fc2 = (theirs.get_submodule(".".join(p)) for p in new._fc_paths)
    was = theirs.training
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            x = torch.randn(2, channels, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            for mode in (was, not was):
                theirs.train(mode)
                ref = _run(lambda t: reference_squeeze_excite(
                    t, fc1.weight, fc1.bias, fc2.weight, fc2.bias, new.act_name, new.gate_name), x)
                got = _run(theirs, x)
                torch.testing.assert_close(got[0], ref[0])
                torch.testing.assert_close(got[1], ref[1])
    except Exception:  # noqa: BLE001 - a block that does not run or differs is not an SE block
        return False
    return True


class SqueezeExciteRule(ModuleRule):
    pattern = "squeeze-excite"

    def apply(self, module: nn.Module, ctx):
        if isinstance(module, SqueezeExcite) or not module._modules:
            return None
        try:
            new = SwappedSqueezeExcite.from_module(module)
        except (TypeError, ValueError):
            return None
        name = type(module).__name__
        if any(ctx.shared(m) for m in module.modules()):
            return Keep(f"squeeze-excite ({name}): a submodule is used elsewhere too, kept eager")
        if not _behaves_as_se(module, new):
            return Keep(f"squeeze-excite ({name}): has SE children but its forward computes "
                        "something else, not swapped as a whole")
        return Swap(new, f"squeeze-excite {new.act_name}/{new.gate_name} ({name})")


# ---- SE written inline in a block's forward (fx) -----------------------------------------------

_GATE_FNS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid"}


def _only_user(n, user) -> bool:
    return isinstance(n, fx.Node) and list(n.users) == [user]


def _pool_of(n):
    """x if n is a global average pool of x keeping dims (N, C, 1, 1)."""
    if not isinstance(n, fx.Node) or not n.args:
        return None
    if n.op == "call_function" and n.target is F.adaptive_avg_pool2d and len(n.args) == 2 \
            and not n.kwargs and n.args[1] in (1, (1, 1), [1, 1]):
        return n.args[0]
    if (n.op == "call_method" and n.target == "mean") or (n.op == "call_function" and n.target is torch.mean):
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if isinstance(dims, (tuple, list)) and sorted(dims) in ([2, 3], [-2, -1]) \
                and n.kwargs.get("keepdim") is True and len(n.args) == 2 and set(n.kwargs) == {"keepdim"}:
            return n.args[0]
    return None


class InlineSqueezeExciteRule(BlockRule):
    """SE written inline (module docstring) -> ``inline_squeeze_excite``; rules/inline.py
    builds the replacement module from the rewritten graph."""
    pattern = "inline squeeze-excite"

    def apply(self, block: nn.Module, graphs, ctx):
        graph = single_graph(block, graphs)
        if graph is None:
            return None
        calls = {}
        for n in graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        match = _Matcher(block, ctx)
        changed = False
        for n in list(graph.nodes):
            found = self._match(block, n, calls, match, ctx)
            if found is None:
                continue
            x, fc1, fc2, act, gate, nodes, modules = found
            with graph.inserting_before(n):
                params = [graph.get_attr(f"{fc}.{p}") if getattr(block.get_submodule(fc), p) is not None
                          else None for fc in (fc1, fc2) for p in ("weight", "bias")]
                new = graph.call_function(inline_squeeze_excite, (x, *params, act, gate))
            n.replace_all_uses_with(new)
            for m in reversed([m for m in graph.nodes if m in nodes]):
                graph.erase_node(m)
            ctx.consume(*modules)
            ctx.report.swap(f"inline squeeze-excite {act}/{gate}", ctx.path)
            changed = True
        if changed:
            hand_over(block, graphs, ctx)
        return None

    @staticmethod
    def _match(block, n, calls, match, ctx):
        if not (isinstance(n, fx.Node) and n.op in ("call_function", "call_method")
                and n.target in (operator.mul, torch.mul, "mul") and len(n.args) == 2 and not n.kwargs):
            return None
        for x, s in (n.args, n.args[::-1]):
            if not isinstance(x, fx.Node) or not _only_user(s, n):
                continue
            gate = None
            if s.op == "call_function" and s.target in _GATE_FNS and len(s.args) == 1 and not s.kwargs:
                gate = _GATE_FNS[s.target]
            elif s.op == "call_method" and s.target == "sigmoid" and len(s.args) == 1:
                gate = "sigmoid"
            elif s.op == "call_module" and len(s.args) == 1 and not s.kwargs:
                gate = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}.get(
                    type(block.get_submodule(s.target)))
            if gate is None:
                continue
            f2 = s.args[0]
            if not _only_user(f2, s) or f2.op != "call_module":
                continue
            a = f2.args[0] if len(f2.args) == 1 and not f2.kwargs else None
            act, act_nodes = "none", set()
            if isinstance(a, fx.Node) and not (a.op == "call_module" and isinstance(
                    block.get_submodule(a.target), nn.Conv2d)):
                u = match.unary(a)
                if u is None or not _only_user(a, f2):
                    continue
                act, act_nodes = u[1] or "none", {a}
                a = u[0]
            f1 = a
            if not (_only_user(f1, next(iter(act_nodes), f2)) and f1.op == "call_module"
                    and len(f1.args) == 1 and not f1.kwargs):
                continue
            p = f1.args[0]
            if isinstance(p, fx.Node) and p.op == "call_module" and len(p.args) == 1:
                pooled_mod = block.get_submodule(p.target)
                src = p.args[0] if type(pooled_mod) is nn.AdaptiveAvgPool2d and \
                    pooled_mod.output_size in (1, (1, 1)) else None
            else:
                src = _pool_of(p)
            if src is not x or not _only_user(p, f1):
                continue
            m1, m2 = block.get_submodule(f1.target), block.get_submodule(f2.target)
            # modules this SE alone calls: consumed (no other rule swaps them)
            modules = [block.get_submodule(t.target) for t in (f1, f2, p, *act_nodes, s)
                       if t.op == "call_module" and calls[t.target] == 1]
            if not all(type(m) is nn.Conv2d and _fc_ok(m) for m in (m1, m2)) or \
                    m1.weight.shape[:2] != m2.weight.shape[:2][::-1] or \
                    calls[f1.target] != 1 or calls[f2.target] != 1 or ctx.shared(m1) or ctx.shared(m2):
                continue
            return x, f1.target, f2.target, act, gate, {n, s, f2, f1, p} | act_nodes, modules
        return None
