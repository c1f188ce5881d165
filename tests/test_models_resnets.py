"""Zoo part 2, the residual family: ResNet, wide ResNet, ResNeXt, pre-activation ResNet,
WRN-28-10 and ResNet-110 with stochastic depth."""
from __future__ import annotations

import pytest
import torch

import fastblocks
from zoo_checks import check_architecture, param_count

# Parameter counts of the ImageNet (1000-class) / CIFAR-10 configurations, with their source.
PUBLISHED = {
    "resnet18": (11_689_512, "torchvision resnet18"),
    "resnet34": (21_797_672, "torchvision resnet34"),
    "resnet50": (25_557_032, "torchvision resnet50"),
    "resnet101": (44_549_160, "torchvision resnet101"),
    "resnet152": (60_192_808, "torchvision resnet152"),
    "wide_resnet50_2": (68_883_240, "torchvision wide_resnet50_2"),
    "resnext50_32x4d": (25_028_904, "torchvision resnext50_32x4d"),
    "resnext101_32x4d": (44_180_000, "Xie et al. 2017 / timm resnext101_32x4d: 44.18M"),
    "resnext101_64x4d": (83_455_272, "torchvision resnext101_64x4d"),
    "preact_resnet18": (11_700_000, "He et al. 2016b: as ResNet-18, 11.7M"),
    "preact_resnet50": (25_600_000, "He et al. 2016b: as ResNet-50, 25.6M"),
    "wrn28_10": (36_500_000, "Zagoruyko & Komodakis 2016, Table 1: WRN-28-10 36.5M"),
    "resnet110_sd": (1_730_000, "He et al. 2016 Table 6: ResNet-110 1.7M (1.73M unrounded, option-A shortcuts)"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count(name):
    want, source = PUBLISHED[name]
    got = param_count(name)
    assert abs(got - want) <= 0.01 * want, f"{name}: {got} vs {want} ({source})"


FAST = ["resnet18", "resnext50_32x4d", "preact_resnet18", "resnet110_sd"]
SLOW = ["resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext101_32x4d",
        "resnext101_64x4d", "preact_resnet34", "preact_resnet50", "preact_resnet101",
        "preact_resnet152", "wrn28_10"]


@pytest.mark.parametrize("name", FAST)
def test_architecture(name):
    check_architecture(name, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_architecture_large(name):
    check_architecture(name, 32)


def test_every_residual_name_is_tested():
    names = set(fastblocks.list_models("resnet*") + fastblocks.list_models("resnext*")
                + fastblocks.list_models("preact_*") + fastblocks.list_models("wide_resnet*")
                + fastblocks.list_models("wrn*"))
    assert names == set(FAST) | set(SLOW)


def test_stochastic_depth_drops_in_training_and_scales_at_test():
    from fastblocks.models.cifar_resnet import StochasticDepthBlock
    model = fastblocks.create_model("resnet110_sd", fused=False)
    blocks = [m for m in model.modules() if isinstance(m, StochasticDepthBlock)]
    p = [b.survival for b in blocks]
    assert len(p) == 54 and p[0] == pytest.approx(1 - 0.5 / 54) and p[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(p, p[1:]))  # linear decay
    block = blocks[-1].train()
    x = torch.randn(2, 64, 8, 8)
    torch.manual_seed(1)
    outs = [block(x) for _ in range(64)]
    dropped = sum(torch.equal(o, torch.relu(x)) for o in outs)
    assert 16 <= dropped <= 48  # p = 0.5 per mini-batch
    block.eval()
    branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(x + 0.5 * branch))
