"""The rule interface (see the package docstring) and the context rules see."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._probe import probe_activation
from ._report import Report


@dataclass
class Swap:
    """A rule's answer: put ``module`` where the matched module was (it may be the same
    object with its class swapped by ``_classswap.swap_class``)."""
    module: nn.Module
    pattern: str


@dataclass
class Keep:
    """A rule's answer: the module is the rule's kind but stays eager, for ``reason``."""
    reason: str


class ModuleRule:
    """Swaps one module (with everything under it) for a fastblocks module.

    ``apply(module, ctx)`` returns a Swap, a Keep, or None (not this rule's pattern). A Swap
    whose module is a new object must have the original's state_dict keys and share its
    tensors (optimize() checks, and refuses the swap otherwise); revert() puts the original
    object back. ``pattern``: the report's name for what the rule swaps.
    """
    pattern = ""

    def apply(self, module: nn.Module, ctx: "Context"):  # pragma: no cover - interface
        raise NotImplementedError


class BlockRule:
    """Fuses a pattern spanning several children of one block (conv -> BN -> activation).

    ``apply(block, graphs, ctx)``: ``graphs`` are the torch.fx graphs of ``block.forward``
    with every child a leaf, one per combination of its boolean flags (_trace.py); None where
    the block cannot be traced. A pattern holds only if it holds in every graph. The rule swaps
    classes of children in place (``ctx.consume`` them so no ModuleRule touches them again)
    and reports through ``ctx``; it may return a module to replace the block (sharing its
    children and tensors, e.g. a rewritten graph: rules/inline.py), else None.
    """
    pattern = ""

    def apply(self, block: nn.Module, graphs, ctx: "Context"):  # pragma: no cover
        raise NotImplementedError


@dataclass
class Context:
    """What rules see: the report, the model's module-use counts, and caches."""
    report: Report
    uses: dict[int, int]                       # id(module) -> slots it occupies in the model
    path: str = ""
    consumed: set[int] = field(default_factory=set)
    _acts: dict[int, object] = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # for rules' own per-module findings

    def activation(self, module: nn.Module | None):
        """probe_activation, cached per module."""
        if module is None:
            return None
        key = id(module)
        if key not in self._acts:
            self._acts[key] = probe_activation(module)
        return self._acts[key]

    def shared(self, module: nn.Module) -> bool:
        return self.uses.get(id(module), 0) > 1

    def consume(self, *modules: nn.Module) -> None:
        self.consumed.update(id(m) for m in modules if m is not None)

    def child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name


def same_state(original: nn.Module, new: nn.Module) -> bool:
    """Whether ``new`` has ``original``'s state_dict keys in the same order, sharing tensors."""
    a, b = original.state_dict(keep_vars=True), new.state_dict(keep_vars=True)
    if list(a) != list(b):
        return False
    return all(isinstance(a[k], torch.Tensor) and a[k] is b[k] for k in a)
