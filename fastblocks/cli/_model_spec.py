"""What a MODEL argument names, and how to build it: a zoo name (`fastblocks list`), a
Hugging Face transformers image-classification config (``hf:MobileNetV2`` builds
``MobileNetV2Config()`` with random weights, no download), or a user's own factory
(``package.module:function``, called with no arguments)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

from ._common import UsageError


@dataclass
class ModelSpec:
    label: str
    model: nn.Module  # plain PyTorch model (fastblocks.optimize not applied)
    input_size: tuple[int, int, int]  # (C, H, W) it is built for
    hf: bool = False  # a transformers model (returns a ModelOutput)


def _hf(name: str) -> ModelSpec:
    try:
        import transformers
    except ImportError as exc:
        raise UsageError(f"hf:{name} needs the transformers package ({exc})") from None
    cfg_cls = getattr(transformers, f"{name}Config", None)
    if cfg_cls is None:
        raise UsageError(f"transformers has no {name}Config (e.g. hf:MobileNetV2, hf:EfficientNet, "
                         "hf:ResNet, hf:RegNet, hf:MobileNetV1)")
    cfg = cfg_cls()
    model = transformers.AutoModelForImageClassification.from_config(cfg)
    size = getattr(cfg, "image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return ModelSpec(f"hf:{name}", model, (getattr(cfg, "num_channels", 3), size, size), hf=True)


def _factory(spec: str) -> ModelSpec:
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import {spec!r}: {exc}") from None
    model = fn()
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    size = getattr(model, "input_size", (3, 224, 224))
    return ModelSpec(spec, model, tuple(size))


def check_zoo_name(name: str):
    """The zoo's model_info for ``name``; UsageError listing close names otherwise."""
    from ..models import model_info
    try:
        return model_info(name)
    except ValueError as exc:
        raise UsageError(f"{exc}; or hf:<transformers config> or package.module:factory") from None


def load_model(spec: str, num_classes: int | None = None, **kwargs) -> ModelSpec:
    """Build the plain model that ``spec`` names (see the module docstring). Raises UsageError
    for a name that is none of these, listing close zoo names."""
    if spec.startswith("hf:"):
        return _hf(spec[3:])
    if ":" in spec:
        return _factory(spec)
    from ..models import create_model
    info = check_zoo_name(spec)
    extra = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(spec, fused=False, **extra, **kwargs)
    return ModelSpec(spec, model, info.input_size)
