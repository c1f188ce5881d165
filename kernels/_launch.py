"""Launcher helpers shared by the Triton kernel families."""
import torch
import triton
import triton.language as tl


def flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-d contiguous view over the storage of a non-overlapping dense tensor, so an
    elementwise kernel indexes it linearly whatever its layout (the interpreter, too, only
    sees a plain 1-d tensor)."""
    return t.as_strided((t.numel(),), (1,))


def acc_dtype(t: torch.Tensor):
    """Accumulation type inside kernels: float64 for float64 tensors, float32 otherwise."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def blocks_grid(n: int):
    """Grid of a 1-d kernel over n elements, BLOCK (the autotuner's config) a program."""
    return lambda meta: (triton.cdiv(n, meta["BLOCK"]),)
