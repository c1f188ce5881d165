"""The test suite's tolerances: the one rule of fastblocks.testing (DESIGN.md, test contract),
shared with `fastblocks verify`, `fastblocks demo` and the benchmark harness.

- float32 / float64: torch.testing.assert_close defaults.
- float16 / bfloat16: max error against a float64 reference at most LOWP_FACTOR x eager's own.
- float32 results of large reductions (weight/bias gradients): assert_close defaults, or the
  float64-reference bound above, because summation order alone exceeds rtol 1.3e-6 there
  (the reason is written out in fastblocks/testing.py).
"""
from __future__ import annotations

import torch

from fastblocks.testing import LOW_PRECISION, LOWP_FACTOR, compare, max_abs_err  # noqa: F401

KERNEL_BACKENDS_CPU = ("cpu", "triton")  # triton on CPU tensors = interpreter
KERNEL_BACKENDS_CUDA = ("cuda", "triton")


def assert_parity(out: torch.Tensor, eager: torch.Tensor, ref_hi: torch.Tensor | None = None,
                  what: str = "output", reduction: bool = False) -> None:
    """Assert `out` matches the eager result `eager` (same dtype) by fastblocks.testing's rule;
    `ref_hi` is the float64 reference (needed for fp16/bf16, and fp32 reductions)."""
    ok, _, msg = compare(out, eager, ref_hi, reduction)
    assert ok, f"{what}: {msg}"
