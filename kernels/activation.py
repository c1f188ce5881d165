"""Triton kernels of the activation family: one masked pass over a dense tensor's storage.

Memory-bound: 2 tensors of traffic forward (read x, write y), 3 backward (read g and x,
write gx). BLOCK = 4096 with 8 warps gives each thread 16 elements, i.e. two 16-byte vector
accesses in fp16/bf16 — a common choice for streaming kernels on Hopper: the prior config
of the autotuner (kernels/_autotune.py), which on a GPU also tries smaller programs (more of
them for small tensors) per activation, dtype and log-4 size class. NOT yet run on a GPU.
"""
import torch
import triton
import triton.language as tl

from fastblocks.ops._layout import as_dense, like_layout  # torch-only layout rules, shared

from ._activation_math import act_grad, apply_act
from ._autotune import autotune, size_class
from ._launch import acc_dtype, blocks_grid, flat

# (BLOCK, warps): the prior first (16 elements per thread), then 4 and 8 per thread.
CONFIGS = [triton.Config({"BLOCK": 4096}, num_warps=8),
           triton.Config({"BLOCK": 1024}, num_warps=4),
           triton.Config({"BLOCK": 2048}, num_warps=8)]
KEY = ["ACT", "size_class"]  # + the tensors' dtype (Triton adds it)


@autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _activation_forward_kernel(x_ptr, y_ptr, n, size_class, ACT: tl.constexpr,
                               ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    y = apply_act(x, ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@autotune(configs=CONFIGS, key=KEY)
@triton.jit
def _activation_backward_kernel(g_ptr, x_ptr, gx_ptr, n, size_class, ACT: tl.constexpr,
                                ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(gx_ptr + offs, act_grad(g, x, ACT).to(gx_ptr.dtype.element_ty), mask=mask)


def activation_forward(x: torch.Tensor, act: int) -> torch.Tensor:
    """y = act(x) for x in any strides (a non-dense x is copied once); y has the dense x's
    strides."""
    x = as_dense(x)
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _activation_forward_kernel[blocks_grid(n)](flat(x), flat(y), n, size_class(n),
                                                   ACT=act, ACC=acc_dtype(x))
    return y


def activation_backward(grad: torch.Tensor, x: torch.Tensor, act: int) -> torch.Tensor:
    """grad * act'(x) for grad and x of one shape and dtype, in any strides: grad is used in
    place when it places its elements as the dense x does (strides of size-1 dimensions, empty
    tensors), else copied once into x's layout (an expanded gradient). The result has the
    dense x's strides."""
    assert grad.shape == x.shape and grad.dtype == x.dtype, "grad and x differ in shape or dtype"
    x = as_dense(x)
    grad = like_layout(grad, x)
    gx = torch.empty_like(x)
    n = x.numel()
    if n:
        _activation_backward_kernel[blocks_grid(n)](flat(grad), flat(x), flat(gx), n,
                                                    size_class(n), ACT=act, ACC=acc_dtype(x))
    return gx
