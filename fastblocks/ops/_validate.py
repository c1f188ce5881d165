"""Argument checks shared by the public ops; each error names the argument at fault."""
from __future__ import annotations

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, arg: str) -> None:
    """`t` is a tensor of a supported floating dtype: TypeError naming `arg` otherwise."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATING:
        raise TypeError(
            f"{arg} must have a floating dtype (float16, bfloat16, float32 or float64), got {t.dtype}"
        )


def check_same(ref: torch.Tensor, ref_arg: str, t: torch.Tensor, arg: str) -> None:
    """`t` has `ref`'s device and dtype."""
    if t.device != ref.device:
        raise ValueError(f"{arg} is on {t.device} but {ref_arg} is on {ref.device}; they must share a device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{arg} has dtype {t.dtype} but {ref_arg} has {ref.dtype}; they must match")


def check_ndim(t: torch.Tensor, ndim: int, arg: str, shape_doc: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{arg} must be {ndim}-d {shape_doc}, got shape {tuple(t.shape)}")
