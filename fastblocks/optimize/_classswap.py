"""Swapping a module's class in place, and back.

Most swaps keep the very module object and change only its class to a fastblocks subclass
with a faster forward (a conv becomes the head of a fused conv -> BN -> activation chain, the
BN and activation that follow it pass their input through). Parameters, buffers, hooks,
attribute names and the container it sits in all stay as they were, so ``state_dict()``,
``named_parameters()`` (and their order: optimizer state indexes it), indexing of
``nn.Sequential`` and the parent's forward are untouched. The fastblocks classes are
importable, so pickling and deepcopy work; ``restore_class`` undoes the swap for revert().
"""
from __future__ import annotations

from torch import nn

_KEY = "_fastblocks_swapped"  # (original class, names of the attributes the swap added)


def swap_class(module: nn.Module, new_cls: type, **attrs) -> nn.Module:
    """Give ``module`` the class ``new_cls`` and the plain attributes ``attrs`` (stored in
    ``__dict__`` directly: a module value is a reference, not a registered child)."""
    if _KEY in module.__dict__:
        raise ValueError(f"{type(module).__name__} is already swapped")
    original = type(module)
    module.__class__ = new_cls  # TypeError for incompatible layouts (__slots__): caller skips
    for k, v in attrs.items():
        module.__dict__[k] = v
    module.__dict__[_KEY] = (original, tuple(attrs))
    return module


def reswap_class(module: nn.Module, new_cls: type, **attrs) -> nn.Module:
    """Move a module ``swap_class`` already swapped on to another fastblocks class, adding
    ``attrs`` (a fused chain that also takes over the channel shuffle after it);
    ``restore_class`` still gives the original class back, without any added attribute."""
    original, names = module.__dict__[_KEY]
    module.__class__ = new_cls
    for k, v in attrs.items():
        module.__dict__[k] = v
    module.__dict__[_KEY] = (original, names + tuple(k for k in attrs if k not in names))
    return module


def is_swapped(module: nn.Module) -> bool:
    return _KEY in module.__dict__


def original_class(module: nn.Module) -> type:
    return module.__dict__[_KEY][0] if _KEY in module.__dict__ else type(module)


def restore_class(module: nn.Module) -> nn.Module:
    """Undo ``swap_class``: the original class, without the added attributes and caches."""
    original, names = module.__dict__.pop(_KEY)
    for k in names:
        module.__dict__.pop(k, None)
    module.__dict__.pop("_fold_cache", None)
    module.__dict__.pop("_conv_plan", None)
    module.__class__ = original
    return module
