"""optimize(model) and revert(model): walk the model, apply the rules, undo them."""
from __future__ import annotations

import copy
from collections import Counter

from torch import nn

from . import _cpu_layout
from ._classswap import is_swapped, restore_class
from ._report import Report
from ._rule import Context, Keep, same_state
from ._trace import trace_block
from .rules import BLOCK_RULES, LATE_BLOCK_RULES, MODULE_RULES

_ORIGINAL = "_fastblocks_original"  # on a replacement module: the module it replaced
_NO_FORWARD = (nn.ModuleList, nn.ModuleDict)


def optimize(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with fastblocks modules wherever a pattern matches (see the package
    docstring), everything else as it was. Parameters, buffers, ``state_dict()`` keys and
    values and the module's mode are unchanged. The report (printable) is returned as
    ``model.fastblocks_report``.

    Args:
        model: any torch.nn.Module, in train or eval mode, on any device and dtype.
        inplace: change ``model`` itself (default: a deep copy is optimized and returned, the
            argument is left untouched).
    Raises:
        TypeError: ``model`` is not an nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    ctx = Context(Report(), dict(uses))
    state = {"replaced": {}, "visited": set()}
    model = _visit(model, "", ctx, state)
    model.__dict__["fastblocks_report"] = ctx.report
    if _cpu_layout.pays_off(model, ctx.report):
        _cpu_layout.install(model)
    return model


def _visit(module: nn.Module, path: str, ctx: Context, state) -> nn.Module:
    key = id(module)
    if key in state["replaced"]:
        return state["replaced"][key]
    if key in state["visited"]:
        return module
    state["visited"].add(key)
    if key in ctx.consumed or is_swapped(module) or _ORIGINAL in module.__dict__:
        return module  # fused by a block rule, or swapped by an earlier optimize()
    ctx.path = path
    for rule in MODULE_RULES:
        result = rule.apply(module, ctx)
        if result is None:
            continue
        if isinstance(result, Keep):
            ctx.report.keep(result.reason, path)
            break
        new = result.module
        if new is not module:
            if not same_state(module, new):
                ctx.report.keep(f"{result.pattern}: the replacement would change the state_dict, "
                                "kept eager", path)
                break
            new.__dict__[_ORIGINAL] = module
            new.training = module.training
            state["replaced"][key] = new
        ctx.report.swap(result.pattern, path)
        return new
    replacement = module
    if module._modules:
        graphs = None
        if not isinstance(module, _NO_FORWARD):
            graphs, why = trace_block(module)
            if graphs is None:
                ctx.report.note(f"torch.fx could not trace {type(module).__name__} ({why}); "
                                "its children were swapped module by module",
                                about=type(module).__name__)
        if not isinstance(module, _NO_FORWARD):
            for rule in BLOCK_RULES:
                ctx.path = path
                new = rule.apply(module, graphs, ctx)
                if isinstance(new, nn.Module) and new is not module:
                    if same_state(module, new):
                        new.__dict__[_ORIGINAL] = module
                        state["replaced"][key] = replacement = new
                    break
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            new = _visit(child, f"{path}.{name}" if path else name, ctx, state)
            if new is not child:
                module._modules[name] = new
        if graphs is not None:
            for rule in LATE_BLOCK_RULES:  # patterns spanning the children's own fusions
                ctx.path = path
                rule.apply(replacement, graphs, ctx)
        replacement.__dict__.pop("_fb_graph", None)  # InlineFused's graph: no rule needs it now
    return replacement


def revert(model: nn.Module) -> nn.Module:
    """Undo ``optimize`` in place: plain PyTorch modules (the original classes and objects)
    holding the same parameters and buffers, for ONNX/TorchScript export or debugging.
    Returns ``model`` (or, if ``model`` itself was replaced, the original module).

    Raises: TypeError if ``model`` is not an nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    done: dict[int, nn.Module] = {}
    _cpu_layout.uninstall(model)
    model = _revert(model, done)
    model.__dict__.pop("fastblocks_report", None)
    return model


def _revert(module: nn.Module, done: dict) -> nn.Module:
    key = id(module)
    if key in done:
        return done[key]
    done[key] = module
    for name, child in list(module._modules.items()):
        if child is not None:
            new = _revert(child, done)
            if new is not child:
                module._modules[name] = new
    original = module.__dict__.get(_ORIGINAL)
    if original is not None:
        original.training = module.training
        done[key] = original
        return original
    if is_swapped(module):
        restore_class(module)
    return module
