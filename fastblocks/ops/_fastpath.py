"""When an op may skip its registered torch.library op and call its kernels directly.

Going through a Python custom op costs ~10 µs per call (measured on the 2-core x86 dev box,
torch 2.13: hardswish on 8 elements took 17.7 µs through the op vs 2.2 µs for the kernel),
as much as the kernel itself for the small feature maps of MobileNet-style inference. In
training the registered op pays it twice more (its autograd kernel, then the registered
backward op). Plain eager code needs none of what the registration provides (fake tensors,
torch.compile tracing, dispatcher-level autograd), so:

- plain eager inference calls the kernels directly (`direct_call_ok`);
- plain eager training runs a `torch.autograd.Function` made by `direct_autograd` from the
  very functions the registered op uses (same forward, setup_context and backward logic,
  with the kernels called directly);
- everything else (compiling, fake tensors, tensor subclasses, dispatch or torch_function
  modes) takes the registered op.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.autograd.function import once_differentiable


def plain_eager(*tensors) -> bool:
    """True when nothing but eager PyTorch sees these (possibly None) tensors: not tracing or
    compiling, no torch.func transform (its wrapped tensors pass for plain ones), no tensor
    subclass (FakeTensor, ...), no dispatch or __torch_function__ mode."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    for t in tensors:
        if t is not None and type(t) is not torch.Tensor:
            return False
    return not (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled())


def needs_grad(*tensors) -> bool:
    """Whether autograd will record an op on these (possibly None) tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def direct_call_ok(*tensors) -> bool:
    """True for plain eager inference on these tensors: call the kernels, no autograd."""
    return plain_eager(*tensors) and not needs_grad(*tensors)


def direct_autograd(name: str, forward: Callable, setup_context: Callable,
                    backward: Callable) -> Callable:
    """`apply` of an autograd.Function running `forward(*inputs)`, then
    `setup_context(ctx, inputs, output)` and `backward(ctx, *grads)`: the registered op's own
    autograd functions, given kernel-calling forward and backward.

    setup_context is called from inside the old-style ``forward(ctx, *inputs)``: a Function
    with a separate setup_context staticmethod binds its arguments with inspect.signature on
    every call (~10 µs, torch 2.13). The backward is once-differentiable: asking for a second
    derivative raises, as it does through the registered op, whose backward op has no
    autograd."""
    def fwd(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def bwd(ctx, *grads):
        return backward(ctx, *grads)

    function = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(fwd),
        "backward": staticmethod(once_differentiable(bwd)),
    })
    return function.apply
