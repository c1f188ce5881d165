"""Parity of a fastblocks op with its eager reference, forward and backward: the one rule
(DESIGN.md, test contract) used by the test suite (tests/tolerances.py), `fastblocks verify`,
`fastblocks demo` and the benchmark harness's check of every provider it times.

- float32 / float64: ``torch.testing.assert_close`` defaults against eager in the same dtype.
- float16 / bfloat16: the max error against a float64 reference at most LOWP_FACTOR times
  eager PyTorch's own max error in that precision.
- Exception, float32 results of large reductions (a conv's weight and bias gradients sum
  N*OH*OW products): the summation order alone moves such sums by more than assert_close's
  rtol of 1.3e-6 (measured: 1.8e-4 relative on a 1x240x28x28 5x5 weight gradient, where ours
  was closer to float64 than eager's). These pass when their max error against a float64
  reference is at most LOWP_FACTOR times eager's own: the same bound as low precision, so an
  actual bug (an error larger than rounding) still fails.
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


def compare(out: Tensor, eager: Tensor, ref_hi: Tensor | None = None,
            reduction: bool = False) -> tuple[bool, float, str]:
    """(ok, max abs error vs eager, message) for one tensor, by the rule above. `ref_hi` is the
    float64 reference (needed for fp16/bf16, and for fp32 when `reduction`)."""
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
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            keep = [ln for ln in lines if ln.startswith(("Mismatched elements", "Greatest relative"))]
            msg = " ".join(lines[:1] + keep) or "mismatch"
        if not (reduction and out.dtype == torch.float32 and ref_hi is not None):
            return False, err, msg
        ours, theirs = max_abs_err(out, ref_hi), max_abs_err(eager, ref_hi)
        if ours <= LOWP_FACTOR * theirs:
            return True, err, ""
        return False, err, (f"{msg}; max error vs float64 {ours:.3g} > {LOWP_FACTOR:g} x eager's "
                            f"{theirs:.3g}")
    if torch.isnan(out).any() and not torch.isnan(eager).any():
        return False, err, "NaN in output"
    if ref_hi is None:
        return False, err, "no high-precision reference for a low-precision check"
    ours, theirs = max_abs_err(out, ref_hi), max_abs_err(eager, ref_hi)
    if ours <= LOWP_FACTOR * theirs:
        return True, err, ""
    return False, err, (f"max error vs float64 reference {ours:.3g} > {LOWP_FACTOR:g} x eager's "
                        f"{theirs:.3g}")


# gradients of these are sums over N*OH*OW (BatchNorm's affine parameters too: bn_weight's
# gradient sums g * x_hat over every value of its channel; 2.0e-4 relative apart from eager's
# on a 2x32x56x56 map, ours closer to float64, bench/gpu_sanitize_cases.py on CPU)
REDUCTION_ARGS = ("weight", "bias", "bn_weight", "bn_bias")


def needs_reference(dtype: torch.dtype) -> bool:
    """Whether `compare` may need a float64 reference for results of this dtype."""
    return dtype in LOW_PRECISION or dtype == torch.float32


@dataclass
class ParityResult:
    ok: bool
    fwd_err: float
    bwd_err: float | None      # max over the gradients; None when not checked
    fwd_ok: bool
    bwd_ok: bool | None
    messages: list[str] = field(default_factory=list)


def _run(fn, tensors, grad_idx, grad_out):
    # Backward on the calling thread: on CUDA the autograd engine otherwise runs it on a device
    # worker thread, which does not see the contextvar behind `fastblocks.backend(...)` (torch
    # <= 2.13), and the backend under test would silently not be the one that ran backward.
    with torch.autograd.set_multithreading_enabled(False):
        return _run_here(fn, tensors, grad_idx, grad_out)


def _run_here(fn, tensors, grad_idx, grad_out):
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
          backward: bool = True, seed: int = 0, names: Sequence[str] | None = None) -> ParityResult:
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
    hi_out = ref_grads = None
    if needs_reference(eager_out.dtype):
        hi = [t.double() if isinstance(t, Tensor) and t.is_floating_point() else t for t in tensors]
        hi_out, ref_grads = _run(eager, hi, grad_idx, None if grad_out is None else grad_out.double())
    # an fp32 forward is held to assert_close defaults: no reference, no exception
    ref_out = None if eager_out.dtype == torch.float32 else hi_out
    failed = []  # (what, ours, eager's, index into the float64 reference: None = output)
    fwd_ok, fwd_err, msg = compare(out, eager_out, ref_out)
    if not fwd_ok:
        failed.append((f"forward: {msg}", out, eager_out, None))
    bwd_ok = bwd_err = None
    if grads is not None:
        bwd_ok, bwd_err = True, 0.0
        for j, (g, ge) in enumerate(zip(grads, eager_grads)):
            reduction = bool(names) and names[grad_idx[j]] in REDUCTION_ARGS
            ok, err, msg = compare(g, ge, None if ref_grads is None else ref_grads[j], reduction)
            bwd_err = max(bwd_err, err)
            if not ok:
                bwd_ok = False
                arg = names[grad_idx[j]] if names else f"input {grad_idx[j]}"
                failed.append((f"grad of {arg}: {msg}", g, ge, j))
    msgs = [f[0] for f in failed]
    if failed and eager_out.dtype == torch.float32 and hi_out is not None:
        # Context for a float32 mismatch: is ours further from the float64 truth than eager is
        # (a bug), or just summed in another order (both equally far)?
        msgs = []
        for what, ours, theirs, j in failed:
            ref = hi_out if j is None else ref_grads[j]
            msgs.append(f"{what} [max error vs float64: ours {max_abs_err(ours, ref):.2g}, "
                        f"eager's {max_abs_err(theirs, ref):.2g}]")
    return ParityResult(fwd_ok and bwd_ok is not False, fwd_err, bwd_err, fwd_ok, bwd_ok, msgs)


def _format_of(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
