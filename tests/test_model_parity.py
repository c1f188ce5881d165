"""fastblocks.model_parity: the output comparison sees a fault in outputs far under
assert_close's atol (a random-init model's eval outputs can be ~1e-9)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastblocks.model_parity import check_model


class _Scaled(nn.Module):
    """A stand-in for a faulty swapped block: its wrapped module's output times ``k``."""

    def __init__(self, inner: nn.Module, k: float):
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x):
        return self.inner(x) * self.k


def _tiny_output_model(scale: float = 1e-8) -> nn.Module:
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    with torch.no_grad():  # outputs of order 1e-9, like mobilenet_v2's in eval mode
        lin.weight.mul_(scale)
        lin.bias.mul_(scale)
    return nn.Sequential(lin)


@pytest.mark.parametrize("scale", [1e-8, 1e-40])  # 1e-40: subnormal float32 outputs
def test_a_x1_5_fault_in_tiny_outputs_is_a_mismatch(scale):
    ref = _tiny_output_model(scale)
    bad = copy.deepcopy(ref)
    bad[0] = _Scaled(bad[0], 1.5)
    x = torch.randn(2, 8)
    res = check_model(ref, bad, lambda: x, mode="eval", backward=False)
    out = res.rows[0]
    assert not res.ok and out.max_abs < 1e-5  # the plain atol of 1e-5 would have hidden it
    assert check_model(ref, copy.deepcopy(ref), lambda: x, mode="eval").ok


class _Cancelling(nn.Module):
    """y = x @ w through 2 * 512 terms of size ~1e3 that cancel pairwise, plus a true part of
    size ~2: eager's float32 output carries rounding noise of ~0.05, some 10^4 times
    assert_close's float32 tolerance. ``perm`` reorders the reduction, as a different kernel
    would."""

    def __init__(self, perm: torch.Tensor | None = None):
        super().__init__()
        self.w = nn.Parameter(torch.randn(512, 16))
        self.perm = perm

    def forward(self, x):
        x2, w2 = torch.cat([x, -x], 1) * 1e3, torch.cat([self.w, self.w], 0)
        if self.perm is not None:
            x2, w2 = x2[:, self.perm], w2[self.perm]
        return x2 @ w2 + 0.1 * (x @ self.w)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_noise_dominated_outputs_pass_by_the_float64_bound(mode):
    # The power-of-two scaling never makes a reordered reduction fail where eager's own output
    # is noise: the float64 branch of the rule bounds the candidate by eager's own error.
    torch.manual_seed(0)
    ref = _Cancelling()
    reordered = _Cancelling(torch.randperm(1024))
    reordered.load_state_dict(ref.state_dict())
    x = torch.randn(64, 512)
    res = check_model(ref, reordered, lambda: x, mode=mode)
    assert res.ok, [r.message for r in res.rows if not r.ok]
    assert res.rows[0].max_abs > 1e-2  # far past assert_close: only the float64 bound passes it
    bad = _Scaled(copy.deepcopy(ref), 1.5)  # a fault well above the noise is still seen
    assert not check_model(ref, bad, lambda: x, mode=mode, backward=False).ok
