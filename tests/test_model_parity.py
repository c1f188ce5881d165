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
