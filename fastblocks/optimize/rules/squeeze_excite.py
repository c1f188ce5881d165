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

CPU policy (as rules/activation.py): on CPU tensors, inference (no autograd graph) runs the
eager composition where it measured faster, training uses the fused op (``_CPU_NOTE``).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ...nn.squeeze_excite import SqueezeExcite
from ...ops.squeeze_excite import reference_squeeze_excite
from .._rule import Keep, ModuleRule, Swap

_CPU_NOTE = None


class SwappedSqueezeExcite(SqueezeExcite):
    """fastblocks.nn.SqueezeExcite with the CPU policy of the module docstring.
    (N, C, H, W) or (C, H, W) -> same shape, dtype and layout."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and not (torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters()))):
            fc1, fc2 = self._fc(self._fc_paths[0]), self._fc(self._fc_paths[1])
            return reference_squeeze_excite(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                                            self.act_name, self.gate_name)
        return super().forward(x)


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
                        "something else, kept eager")
        return Swap(new, f"squeeze-excite {new.act_name}/{new.gate_name} ({name})")
