"""Shared by the optimize tests: run a model forward and backward, and compare an optimized
model with its eager original (outputs and every parameter gradient) by the one tolerance
rule of fastblocks.testing, plus their parameters and buffers afterwards."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastblocks.testing import compare


def output_of(out):
    return out.logits if hasattr(out, "logits") else out


def forward_backward(model: nn.Module, x: torch.Tensor, seed: int = 0):
    """(output, x's gradient, {name: gradient}) of one forward and backward with a fixed
    output gradient; the seed also fixes dropout masks."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = output_of(model(x))
    gen = torch.Generator().manual_seed(seed + 1)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    out.backward(g)
    # names without torch.compile's "_orig_mod." prefix
    grads = {n.removeprefix("_orig_mod."): p.grad for n, p in model.named_parameters()
             if p.grad is not None}
    return out.detach(), x.grad, grads


def assert_same_model(plain: nn.Module, fused: nn.Module, x: torch.Tensor, train: bool,
                      steps: int = 1, backward: bool = True) -> None:
    """Compare ``fused`` with ``plain`` (same weights) for ``steps`` forward(+backward) calls
    in the given mode; a float64 copy of ``plain`` is the high-precision reference."""
    ref = copy.deepcopy(plain).double()
    for m in (plain, fused, ref):
        m.train(train)
    for step in range(steps):
        if backward:
            o_p, gx_p, g_p = forward_backward(plain, x, step)
            o_f, gx_f, g_f = forward_backward(fused, x, step)
            o_r, gx_r, g_r = forward_backward(ref, x.double(), step)
        else:
            with torch.no_grad():
                outs = []
                for m, xx in ((plain, x), (fused, x), (ref, x.double())):
                    torch.manual_seed(step)
                    outs.append(output_of(m(xx)))
            o_p, o_f, o_r = outs
        # A model's output is a chain of convolutions, each a sum of C*kh*kw products, and an
        # eval-mode BN folded into the conv's weight rounds differently from the BN applied
        # after it (measured: 2e-4 relative on tiny HF MobileNetV1 logits). So the output is
        # checked as fastblocks.testing checks large reductions: assert_close, or an error
        # against the float64 model at most LOWP_FACTOR x eager's own.
        ok, err, msg = compare(o_f, o_p, o_r, reduction=True)
        assert ok, f"step {step} forward ({'train' if train else 'eval'}): {msg}"
        if not backward:
            continue
        ok, err, msg = compare(gx_f, gx_p, gx_r, reduction=True)  # as the output
        assert ok, f"step {step} input gradient: {msg}"
        assert g_f.keys() == g_p.keys()
        for name in g_p:
            ok, err, msg = compare(g_f[name], g_p[name], g_r[name],
                                   reduction=True)
            assert ok, f"step {step} gradient of {name}: {msg}"
    sd_p = plain.state_dict()
    sd_f = {k.removeprefix("_orig_mod."): v for k, v in fused.state_dict().items()}
    assert list(sd_p) == list(sd_f)
    for k in sd_p:
        torch.testing.assert_close(sd_f[k], sd_p[k], msg=lambda m: f"{k}: {m}")


@pytest.fixture(autouse=True)
def one_thread():
    """Imported by the optimize test modules: tiny tensors on a shared 2-core machine, where
    OpenMP spinning costs far more than it saves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
