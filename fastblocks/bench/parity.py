"""Parity of a fastblocks op with its eager reference, forward and backward: the rule of
tests/tolerances.py (DESIGN.md, test contract), shared by `fastblocks verify`, `fastblocks
demo` and the harness's sanity check of every provider it times.

- float32 / float64: ``torch.testing.assert_close`` defaults against eager in the same dtype.
- float16 / bfloat16: the max error against a float32 reference at most LOWP_FACTOR times
  eager PyTorch's own max error in that precision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

LOWP_FACTOR = 2.0
LOW_PRECISION = (torch.float16, torch.bfloat16)


def max_abs_err(out: Tensor, ref: Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    return (out.detach().double() - ref.detach().double()).abs().max().item()


def compare(out: Tensor, eager: Tensor, ref_hi: Tensor | None = None) -> tuple[bool, float, str]:
    """(ok, max abs error vs eager, message) for one tensor, by the rule above."""
    if out.shape != eager.shape:
        return False, float("nan"), f"shape {tuple(out.shape)} != eager {tuple(eager.shape)}"
    if out.dtype != eager.dtype:
        return False, float("nan"), f"dtype {out.dtype} != eager {eager.dtype}"
    err = max_abs_err(out, eager)
    if out.dtype not in LOW_PRECISION:
        try:
            torch.testing.assert_close(out.detach(), eager.detach())
            return True, err, ""
        except AssertionError as exc:
            return False, err, str(exc).strip().splitlines()[0] if str(exc).strip() else "mismatch"
    if torch.isnan(out).any() and not torch.isnan(eager).any():
        return False, err, "NaN in output"
    if ref_hi is None:
        return False, err, "no high-precision reference for a low-precision check"
    ours, theirs = max_abs_err(out, ref_hi), max_abs_err(eager, ref_hi)
    if ours <= LOWP_FACTOR * theirs:
        return True, err, ""
    return False, err, (f"max error vs fp32 reference {ours:.3g} > {LOWP_FACTOR:g} x eager's "
                        f"{theirs:.3g}")


@dataclass
class ParityResult:
    ok: bool
    fwd_err: float
    bwd_err: float | None      # max over the gradients; None when not checked
    fwd_ok: bool
    bwd_ok: bool | None
    messages: list[str] = field(default_factory=list)


def _run(fn, tensors, grad_idx, grad_out):
    # detach, not clone: a clone of a non-dense view would be contiguous, and the fuzz means
    # to pass such views as they are
    ins = [t.detach().requires_grad_(i in grad_idx) if isinstance(t, Tensor) else t
           for i, t in enumerate(tensors)]
    out = fn(*ins)
    grads = None
    if grad_out is not None and grad_idx:
        grads = torch.autograd.grad(out, [ins[i] for i in grad_idx], grad_out)
    return out.detach(), grads


def check(fast: Callable, eager: Callable, tensors: Sequence, grad_idx: Sequence[int] = (),
          backward: bool = True, seed: int = 0) -> ParityResult:
    """Run `fast` and `eager` on copies of `tensors` (forward, and backward with one random
    output gradient when `backward`), compare by the rule above. `fast` runs in whatever
    backend context the caller set."""
    grad_idx = tuple(grad_idx) if backward else ()
    eager_out, _ = _run(eager, tensors, (), None)
    grad_out = None
    if grad_idx:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        grad_out = torch.randn(eager_out.shape, generator=gen, dtype=torch.float32).to(
            device=eager_out.device, dtype=eager_out.dtype)
        grad_out = grad_out.contiguous(memory_format=_format_of(eager_out))
    eager_out, eager_grads = _run(eager, tensors, grad_idx, grad_out)
    out, grads = _run(fast, tensors, grad_idx, grad_out)
    ref_out = ref_grads = None
    if eager_out.dtype in LOW_PRECISION:
        hi = [t.float() if isinstance(t, Tensor) and t.is_floating_point() else t for t in tensors]
        ref_out, ref_grads = _run(eager, hi, grad_idx, None if grad_out is None else grad_out.float())
    msgs = []
    fwd_ok, fwd_err, msg = compare(out, eager_out, ref_out)
    if not fwd_ok:
        msgs.append(f"forward: {msg}")
    bwd_ok = bwd_err = None
    if grads is not None:
        bwd_ok, bwd_err = True, 0.0
        for j, (g, ge) in enumerate(zip(grads, eager_grads)):
            ok, err, msg = compare(g, ge, None if ref_grads is None else ref_grads[j])
            bwd_err = max(bwd_err, err)
            if not ok:
                bwd_ok = False
                msgs.append(f"grad of input {grad_idx[j]}: {msg}")
    return ParityResult(fwd_ok and bwd_ok is not False, fwd_err, bwd_err, fwd_ok, bwd_ok, msgs)


def _format_of(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
