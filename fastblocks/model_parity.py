"""Parity of an optimized model with the model it came from, forward and every parameter
gradient, in eval and in train mode: what `fastblocks verify MODEL`, `fastblocks demo` and
the zoo's tests check.

The rule is fastblocks.testing's, applied as for long reductions: a model is a chain of them,
so its float32 outputs and gradients pass when they are within ``torch.testing.assert_close``
defaults of eager's, or when their max error against a float64 run of the reference model is
at most LOWP_FACTOR times eager's own (float16/bfloat16: always the latter). Outputs whose
largest |value| is under 1 are first scaled up by a power of two (exact) so that atol does not
hide errors in tiny outputs (_unit_scaled); gradients are compared as they are. A real fault
(a wrong kernel, a skipped BN update) is orders of magnitude past that bound.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .testing import compare, max_abs_err

__all__ = ["ParityRow", "ModelParity", "check_model"]


@dataclass
class ParityRow:
    """One compared tensor: its name, max abs / rel error against eager, whether it passes."""
    what: str
    max_abs: float
    max_rel: float
    ok: bool
    message: str = ""


@dataclass
class ModelParity:
    mode: str  # "eval" or "train"
    rows: list[ParityRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def _tensors(out) -> list[Tensor]:
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, Tensor) and t.is_floating_point()]


def _max_rel(out: Tensor, ref: Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    d = (out.detach().double() - ref.detach().double()).abs()
    return (d / ref.detach().double().abs().clamp_min(1e-6)).max().item()


def _unit_scaled(c: Tensor, r: Tensor, h: Tensor | None):
    """``c``, ``r``, ``h`` times the power of two that brings eager's largest |value| into
    [1, 2), when that value is under 1: the scale-aware form of the output comparison.

    Why: assert_close's float32 atol of 1e-5 is absolute. A randomly initialised model's
    outputs can be far below it (the zoo's mobilenet_v2 in eval mode, whose fresh BN
    statistics shrink activations block by block, outputs values near 3e-9), and then an
    output wrong by x1.5 still compares "close". Scaled up, the same rule (assert_close
    defaults, or the float64 bound) judges errors relative to the output's magnitude. A power
    of two is exact in floating point, so no rounding is added; outputs at or above 1 are not
    rescaled, so the check is never looser than the plain rule.
    """
    peak = r.detach().abs().max().item() if r.numel() else 0.0
    if not (0.0 < peak < 1.0):
        return c, r, h
    # at most 2^126: a float32 scalar beyond 2^127 is inf, and subnormal outputs (peak under
    # 2^-126) would turn into inf * 0 = NaN instead of being compared
    k = 2.0 ** min(-math.floor(math.log2(peak)), 126)
    return c * k, r * k, (None if h is None else h * k)


def _run(model: nn.Module, x: Tensor, grads_out: list[Tensor] | None, seed: int):
    """Outputs and {parameter name: gradient} of one forward (+ backward) with a fixed RNG
    (dropout and stochastic depth draw the same masks in every model)."""
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        outs = _tensors(model(x))
    grads = {}
    if grads_out is not None:
        loss = sum((o * g.to(o.dtype)).sum() for o, g in zip(outs, grads_out) if o.requires_grad)
        if isinstance(loss, Tensor):
            loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads


def check_model(reference: nn.Module, candidate: nn.Module, make_input: Callable[[], Tensor], *,
                mode: str = "eval", backward: bool = True, seed: int = 0) -> ModelParity:
    """Compare ``candidate`` (e.g. ``fastblocks.optimize(reference)``) with ``reference``.

    Both models must hold the same parameter values and names. Runs each in ``mode``
    ("eval" or "train") on ``make_input()`` (one tensor, e.g. (N, 3, H, W) float32), compares
    every floating-point output tensor and, with ``backward``, the gradient of every parameter
    (loss: outputs dotted with fixed random tensors). A float64 copy of the reference gives the
    high-precision side of the rule (CPU only: on a GPU float64 runs as well, only slower).
    The models are not modified beyond what a forward does (train mode updates BN statistics
    in each of them alike). Raises ValueError for an unknown mode.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    x = make_input()
    hi = copy.deepcopy(reference).double()
    for m in (reference, candidate, hi):
        m.train(mode == "train")
    grads_out = None
    if backward:
        # the output shapes, from a forward whose BN-statistics update is then undone
        state = copy.deepcopy(reference.state_dict())
        with torch.no_grad():
            shapes = [o.shape for o in _run(reference, x, None, seed)[0]]
        reference.load_state_dict(state)
        gen = torch.Generator().manual_seed(seed + 1)
        grads_out = [torch.randn(s, generator=gen, dtype=torch.float64).to(x.device) for s in shapes]
    r_out, r_grads = _run(reference, x, grads_out, seed)
    c_out, c_grads = _run(candidate, x, grads_out, seed)
    h_out, h_grads = _run(hi, x.double(), grads_out, seed)
    result = ModelParity(mode)
    if len(c_out) != len(r_out):
        result.rows.append(ParityRow("outputs", float("nan"), float("nan"), False,
                                     f"{len(c_out)} output tensors, eager has {len(r_out)}"))
        return result
    for i, (c, r, h) in enumerate(zip(c_out, r_out, h_out)):
        ok, _, msg = compare(*_unit_scaled(c, r, h), reduction=True)
        err = max_abs_err(c, r)
        result.rows.append(ParityRow(f"output {i} {tuple(c.shape)}", err, _max_rel(c, r), ok, msg))
    for name, rg in r_grads.items():
        cg = c_grads.get(name)
        if cg is None:
            result.rows.append(ParityRow(f"grad {name}", float("nan"), float("nan"), False,
                                         "no gradient in the optimized model"))
            continue
        ok, err, msg = compare(cg, rg, h_grads.get(name), reduction=True)
        result.rows.append(ParityRow(f"grad {name}", err, _max_rel(cg, rg), ok, msg))
    return result

