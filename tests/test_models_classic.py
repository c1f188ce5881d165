"""Zoo part 2, the classic family: LeNet-5, AlexNet, ZFNet, NiN, VGG (+ fully convolutional
and multi-scale dense evaluation), SqueezeNet, DenseNet-BC."""
from __future__ import annotations

import pytest
import torch

import fastblocks
from fastblocks.models.vgg import dense_evaluate
from zoo_checks import check_architecture, param_count

PUBLISHED = {
    "lenet5": (61_706, "LeCun et al. 1998 with full C3 connections: 61,706 (60k in the paper)"),
    "alexnet": (60_965_224, "Krizhevsky et al. 2012, two towers (conv2/4/5 grouped): 60,965,224, the paper's 60M"),
    "zfnet": (62_357_608, "Zeiler & Fergus 2014: AlexNet with 7x7 conv1, ~62M"),
    "nin": (976_234, "Lin et al. 2014 CIFAR-10 NiN (192/160/96 ...): 0.97M"),
    "vgg11": (132_863_336, "torchvision vgg11 (paper: 133M)"),
    "vgg13": (133_047_848, "torchvision vgg13 (paper: 133M)"),
    "vgg16": (138_357_544, "torchvision vgg16 (paper: 138M)"),
    "vgg19": (143_667_240, "torchvision vgg19 (paper: 144M)"),
    "vgg16_bn": (138_365_992, "torchvision vgg16_bn"),
    "squeezenet1_0": (1_248_424, "torchvision squeezenet1_0 (paper: 1.25M)"),
    "squeezenet1_1": (1_235_496, "torchvision squeezenet1_1"),
    "densenet121": (7_978_856, "torchvision densenet121 (paper: 8.0M)"),
    "densenet169": (14_149_480, "torchvision densenet169 (paper: 14.1M)"),
    "densenet201": (20_013_928, "torchvision densenet201 (paper: 20.0M)"),
    "densenet161": (28_681_000, "torchvision densenet161 (paper: 28.7M)"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count(name):
    want, source = PUBLISHED[name]
    got = param_count(name)
    assert abs(got - want) <= 0.01 * want, f"{name}: {got} vs {want} ({source})"


FAST = {"lenet5": 32, "nin": 32, "squeezenet1_1": 64, "alexnet": 67, "densenet121": 32}
SLOW = {"zfnet": 96, "squeezenet1_0": 64, "densenet169": 32, "densenet201": 32, "densenet161": 32}
# VGG's blocks are plain conv -> [BN ->] ReLU chains, the very swaps every other net here checks
# in float64; VGG's float64 run costs 30-75 s of CI CPU (the 25088x4096 head, with gradients),
# so the VGGs run the float32 comparison, a backward and the NaN checks.
VGG_DEEP = ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]


@pytest.mark.parametrize("name", sorted(FAST))
def test_architecture(name):
    check_architecture(name, FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_architecture_large(name):
    check_architecture(name, SLOW[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", VGG_DEEP)
def test_architecture_deep_vgg(name):
    check_architecture(name, 32, float64=False)


def test_vgg_fully_convolutional_equals_forward_and_takes_any_size():
    torch.manual_seed(0)
    # float64: a 7x7 conv and a Linear sum the same 25088 products in different orders
    model = fastblocks.create_model("vgg11", fused=False, num_classes=7).double().eval()
    net = model.fully_convolutional()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x).flatten(1), model(x))
        assert net(torch.randn(1, 3, 288, 256, dtype=torch.float64)).shape == (1, 7, 3, 2)  # score map
        probs = dense_evaluate(model, x, scales=(224, 256))
    assert probs.shape == (1, 7)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="scales must be >= 224"):
        dense_evaluate(model, x, scales=(128,))
