"""The one table of test tolerances (DESIGN.md, test contract), and the helpers that apply it.

- float32 / float64: torch.testing.assert_close defaults (no exceptions so far).
- float16 / bfloat16: the error of our output against a float32 (or float64) reference may be
  at most LOWP_FACTOR times the error of eager PyTorch in the same precision.
"""
from __future__ import annotations

import torch

LOWP_FACTOR = 2.0
LOW_PRECISION = (torch.float16, torch.bfloat16)

KERNEL_BACKENDS_CPU = ("cpu", "triton")  # triton on CPU tensors = interpreter
KERNEL_BACKENDS_CUDA = ("cuda", "triton")


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.numel() == 0:
        return 0.0
    return (out.double() - ref.double()).abs().max().item()


def assert_parity(out: torch.Tensor, eager: torch.Tensor, ref_hi: torch.Tensor | None = None,
                  what: str = "output") -> None:
    """Check `out` against the eager result in the same dtype.

    fp32/fp64: assert_close(out, eager) with default tolerances. fp16/bf16: max error of `out`
    against the high-precision reference `ref_hi` at most LOWP_FACTOR x eager's own error.
    """
    assert out.shape == eager.shape, f"{what}: shape {tuple(out.shape)} != {tuple(eager.shape)}"
    assert out.dtype == eager.dtype, f"{what}: dtype {out.dtype} != {eager.dtype}"
    if out.dtype not in LOW_PRECISION:
        torch.testing.assert_close(out, eager, msg=lambda m: f"{what}: {m}")
        return
    assert ref_hi is not None, "low-precision parity needs a high-precision reference"
    assert not torch.isnan(out).any(), f"{what}: NaN in output"
    ours, theirs = max_err(out, ref_hi), max_err(eager, ref_hi)
    assert ours <= LOWP_FACTOR * theirs, (
        f"{what} ({out.dtype}): max error vs fp32 reference {ours:.3g} > {LOWP_FACTOR} x eager's {theirs:.3g}"
    )
