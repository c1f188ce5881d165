"""Recognising what a module computes by running it (behaviour, not names).

A model library's own activation classes (Hugging Face's ``SiLUActivation``, timm's
``Swish``/``HardSwish``/``HardSigmoid`` and their memory-efficient autograd variants, a user's
``x * torch.sigmoid(x)`` module) carry no common base class. A parameterless leaf module is
taken to compute activation ``a`` when, in train and in eval mode, its output and its input
gradient equal ``a``'s (torch.testing.assert_close, float64) on a probe tensor that covers
every kink and saturation of the candidates (-8..8 in steps of 1/16, plus -3, 0, 3, 6 exactly)
and on a second shape. The probe runs under ``torch.random.fork_rng`` so it leaves the
global random state as it was.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn._activation_names import UNKNOWN, activation_name

_CANDIDATES = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
               "hardsigmoid": F.hardsigmoid, "silu": F.silu}


def _probe_inputs() -> list[torch.Tensor]:
    line = torch.arange(-128, 129, dtype=torch.float64) / 16  # -8 .. 8, kinks at -3, 0, 3, 6
    return [line.reshape(1, 257, 1, 1), torch.linspace(-7, 7, 2 * 3 * 5 * 7,
                                                       dtype=torch.float64).reshape(2, 3, 5, 7)]


def _outputs(fn, x):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.dtype != x.dtype:
        return None
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y), allow_unused=True)
    return y.detach(), (torch.zeros_like(x) if g is None else g)


def _matches(module: nn.Module, name: str) -> bool:
    fn = _CANDIDATES[name]
    for x in _probe_inputs():
        theirs = _outputs(module, x)
        if theirs is None:
            return False
        ours = _outputs(fn, x)
        try:
            torch.testing.assert_close(theirs[0], ours[0])
            torch.testing.assert_close(theirs[1], ours[1])
        except AssertionError:
            return False
    return True


def _leaf_without_state(module: nn.Module) -> bool:
    return not (module._modules or module._parameters or module._buffers)


def probe_activation(module: nn.Module):
    """The activation name ``module`` computes (None for identity, as activation_name), or
    UNKNOWN. Exact torch.nn types are looked up; other parameterless leaves are probed."""
    name = activation_name(module)
    if name is not UNKNOWN:
        return name
    if not _leaf_without_state(module) or type(module).forward is nn.Module.forward:
        return UNKNOWN
    # torch.nn's own other classes (Sigmoid, GELU, Dropout, ...) are none of ours, except a
    # Hardtanh(0, 6) (= ReLU6) and subclasses of the known ones
    if type(module).__module__.startswith("torch.nn.") and not isinstance(
            module, (nn.Hardtanh, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid)):
        return UNKNOWN
    was_training = module.training
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            for name in _CANDIDATES:
                ok = True
                for mode in (True, False):
                    module.train(mode)
                    if not _matches(module, name):
                        ok = False
                        break
                if ok:
                    return name
    except Exception:  # noqa: BLE001 - a module that cannot run on the probe is not ours
        return UNKNOWN
    finally:
        module.train(was_training)
    return UNKNOWN
