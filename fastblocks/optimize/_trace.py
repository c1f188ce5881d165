"""torch.fx graphs of one block's own forward: every child module is a leaf, so the graph
shows exactly how the block wires its children (and what it computes inline).

fx bakes Python values in: ``self.training`` and boolean flags of forward (Hugging Face's
``output_hidden_states=False``) choose branches at trace time. So a block is traced once per
training mode and per combination of its boolean flags (at most 3 flags), with them as
constants, and a rule fuses only what holds in every graph, i.e. however the block is called.

A forward that computes real tensors while being traced (``torch.rand(())`` deciding a
stochastic-depth branch, an in-place update of a buffer: fx hands buffers over as real
tensors) has a graph that is not the whole story: such a block counts as untraceable. Any
buffer it changed is put back, and the global random state is left as it was.
"""
from __future__ import annotations

import inspect
import itertools

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

_MAX_FLAGS = 3


class _ChildrenAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


class _OutsideGraph(Exception):
    pass


class _NoRealTensors(TorchFunctionMode):
    """Raise when a torch function called with no fx Proxy among its arguments returns a
    tensor: that computation happens now, at trace time, not in the graph."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = tree_flatten((args, kwargs))[0]
        if not any(isinstance(a, fx.Proxy) for a in leaves) and any(
                isinstance(o, torch.Tensor) for o in tree_flatten(out)[0]):
            name = getattr(func, "__name__", str(func))
            raise _OutsideGraph(f"forward computes tensors outside the traced graph ({name})")
        return out


def _flags(block: nn.Module) -> list[str]:
    try:
        params = list(inspect.signature(block.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params[1:] if isinstance(p.default, bool)]


def trace_block(block: nn.Module) -> tuple[list[fx.Graph] | None, str]:
    """(graphs, "") or (None, why tracing failed): one graph per training mode and flag
    combination. Python control flow on tensor values or sizes cannot be traced."""
    flags = _flags(block)
    combos = [{}] if not flags or len(flags) > _MAX_FLAGS else [
        dict(zip(flags, values)) for values in itertools.product((False, True), repeat=len(flags))]
    graphs = []
    saved = [(b, b._version, b.detach().clone()) for b in block.buffers()]
    was_training = block.training
    try:
        with torch.random.fork_rng(devices=[]):
            for mode in (was_training, not was_training):
                block.training = mode  # this block only: its children are leaves
                for concrete in combos:
                    with _NoRealTensors():
                        graphs.append(_ChildrenAsLeaves().trace(block, concrete_args=concrete or None))
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{type(exc).__name__}: {msg[:120]}"
    finally:
        block.training = was_training
        with torch.no_grad():
            for b, version, value in saved:
                if b._version != version:
                    b.copy_(value)
    return graphs, ""
