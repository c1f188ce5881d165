"""optimize/revert on torchvision's and timm's own models on a GPU (issue 13: "on a GPU machine,
also torchvision's mobilenet_v3_large, efficientnet_b0, shufflenet_v2_x1_0, resnext50_32x4d
and timm's mobilenetv3_large_100 and efficientnet_b0"). Both libraries are installed on the
GPU machines this project borrows (bench/gpu_session.sh runs the `cuda` tests there), not on
the CPU development machine, so every test here needs a GPU and the library.

Each model, built without weights and with randomized BN statistics: the report must show
fused chains, outputs and every parameter gradient must match eager (train and eval, float32,
the rule of fastblocks.testing against a float64 copy), the bf16 channels_last inference of
the issue's GPU goal must match eager's bf16 run within the same rule, and revert() must give
the original module types back.
"""
from __future__ import annotations

import copy

import pytest
import torch

import fastblocks

from _optimize_helpers import assert_same_model
from fastblocks.testing import compare

# gpu_models: run by bench/gpu_session.sh's own stage (thirdparty), not its 90 s test stage
pytestmark = [pytest.mark.cuda, pytest.mark.gpu_models]

MODELS = [("torchvision", "mobilenet_v3_large"), ("torchvision", "efficientnet_b0"),
          ("torchvision", "shufflenet_v2_x1_0"), ("torchvision", "resnext50_32x4d"),
          ("timm", "mobilenetv3_large_100"), ("timm", "efficientnet_b0")]


def _build(library: str, name: str) -> torch.nn.Module:
    if library == "torchvision":
        models = pytest.importorskip("torchvision.models")
        return getattr(models, name)(weights=None)
    return pytest.importorskip("timm").create_model(name, pretrained=False)


def _randomize_bn(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("library,name", MODELS, ids=[f"{lib}-{n}" for lib, n in MODELS])
def test_third_party_model_on_gpu(library, name):
    torch.manual_seed(0)
    plain = _build(library, name).cuda()
    _randomize_bn(plain)
    fused = fastblocks.optimize(plain)
    counts = fused.fastblocks_report.counts()
    assert any("conv -> BN" in pattern for pattern in counts), counts
    x = torch.randn(2, 3, 224, 224, device="cuda", generator=None)
    assert_same_model(plain, fused, x, train=False)
    assert_same_model(plain, fused, x, train=True)
    assert_same_model(plain, fused, x, train=False)  # eval again: running statistics moved
    # the GPU goal's configuration: bf16 channels_last inference, against eager in bf16
    plain_bf, fused_bf = (copy.deepcopy(m).to(torch.bfloat16, memory_format=torch.channels_last).eval()
                          for m in (plain, fused))
    hi = copy.deepcopy(plain).double().eval()
    xb = torch.randn(8, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad():
        ok, err, msg = compare(fused_bf(xb.bfloat16()).float(), plain_bf(xb.bfloat16()).float(),
                               hi(xb.double()), reduction=True)
    assert ok, f"bf16 channels_last eval: {msg}"
    back = fastblocks.revert(copy.deepcopy(fused))
    assert [type(m) for m in back.modules()] == [type(m) for m in plain.modules()]
