"""torch.fx graphs of one block's own forward: every child module is a leaf, so the graph
shows exactly how the block wires its children (and what it computes inline).

A forward with boolean flags (Hugging Face's ``output_hidden_states=False``) branches on them,
which fx cannot trace symbolically; such a block is traced once per combination of its flags
(at most 3 flags, 8 graphs) with the flags as constants, and a rule fuses only what holds in
every graph, i.e. for every way the block can be called."""
from __future__ import annotations

import inspect
import itertools

import torch
import torch.fx as fx
from torch import nn

_MAX_FLAGS = 3


class _ChildrenAsLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _flags(block: nn.Module) -> list[str]:
    try:
        params = list(inspect.signature(block.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params[1:] if isinstance(p.default, bool)]


def trace_block(block: nn.Module) -> tuple[list[fx.Graph] | None, str]:
    """(graphs, "") or (None, why tracing failed). Tracing runs the forward with proxies:
    Python control flow on tensor values or sizes cannot be traced."""
    flags = _flags(block)
    combos = [{}] if not flags or len(flags) > _MAX_FLAGS else [
        dict(zip(flags, values)) for values in itertools.product((False, True), repeat=len(flags))]
    graphs = []
    # fx proxies parameters but hands buffers to the forward as the real tensors, so a forward
    # that updates a buffer in place (timm's BatchNormAct2d: num_batches_tracked.add_(1))
    # would change the model while being traced: keep them and put back what changed
    saved = [(b, b._version, b.detach().clone()) for b in block.buffers()]
    try:
        for concrete in combos:
            graphs.append(_ChildrenAsLeaves().trace(block, concrete_args=concrete or None))
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{type(exc).__name__}: {msg[:120]}"
    finally:
        with torch.no_grad():
            for b, version, value in saved:
                if b._version != version:
                    b.copy_(value)
    return graphs, ""
