"""InlineFused: a block whose forward is its torch.fx graph after the inline rewrites of
rules/inline.py, holding the very same children, parameters and buffers (the same dicts) as
the block it replaces, so state_dict keys, order and tensors are unchanged. The generated
source is kept, so deepcopy and pickling rebuild the forward from it."""
from __future__ import annotations

import importlib
import types

import torch.fx as fx
from torch import nn


class InlineFused(nn.Module):
    """Runs ``graph`` (traced from ``block`` with its children as leaves, then rewritten) on
    ``block``'s own children and tensors. Shapes and dtypes as the block's."""

    def __init__(self, block: nn.Module, graph: fx.Graph) -> None:
        super().__init__()
        self._modules = block._modules
        self._parameters = block._parameters
        self._buffers = block._buffers
        self.training = block.training
        self._block_name = type(block).__name__
        self.set_graph(graph)

    def set_graph(self, graph: fx.Graph) -> None:
        """Run ``graph`` from now on (a later rule rewrote it further: rules/chain_shuffle.py).
        The graph itself is kept for such rules until the module is copied or pickled."""
        code = graph.python_code(root_module="self")
        self._src = code.src
        self._modnames = {k: v.__name__ for k, v in code.globals.items()
                          if isinstance(v, types.ModuleType)}
        self._globals = {k: v for k, v in code.globals.items()
                         if not isinstance(v, types.ModuleType)}
        self.__dict__["_fn"] = self._compile()
        self.__dict__["_fb_graph"] = graph

    def _compile(self):
        env = dict(self._globals)
        env.update({k: importlib.import_module(v) for k, v in self._modnames.items()})
        exec(compile(self._src, f"<fastblocks inline-fused {id(self):x}>", "exec"), env)  # noqa: S102
        return env["forward"]

    def forward(self, *args, **kwargs):
        return self.__dict__["_fn"](self, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self._block_name} with inline activations fused"

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fn", None)
        state.pop("_fb_graph", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__["_fn"] = self._compile()
