"""Zoo part 2: where torchvision has the architecture, the state_dict keys, order and shapes
are torchvision's, so its checkpoints load as they are. The lists are test data
(tests/data/torchvision_keys/, written by tests/data/dump_torchvision_keys.py in a virtualenv
with torchvision 0.29.1; torchvision does not import beside CI's CPU torch)."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

import fastblocks

KEYS = pathlib.Path(__file__).parent / "data" / "torchvision_keys"
CLASSIC = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
           "resnext50_32x4d", "resnext101_64x4d", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn",
           "vgg13_bn", "vgg16_bn", "vgg19_bn", "squeezenet1_0", "squeezenet1_1", "densenet121",
           "densenet169", "densenet201", "densenet161", "googlenet", "vit_b_16"]


@pytest.mark.parametrize("name", CLASSIC)
def test_state_dict_matches_torchvision(name):
    ref = json.loads((KEYS / f"{name}.json").read_text())
    with torch.device("meta"):  # keys and shapes only: no memory, no initialisation cost
        model = fastblocks.create_model(name, fused=False)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == ref["state_dict"], ref["source"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]
