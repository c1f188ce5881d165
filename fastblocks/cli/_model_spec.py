"""What a MODEL argument names, and how to build it: a zoo name (`fastblocks list`), a
Hugging Face transformers image-classification config (``hf:MobileNetV2`` builds
``MobileNetV2Config()`` with random weights, no download), or a user's own factory
(``package.module:function``, called with no arguments; the module is imported from the
current directory or PYTHONPATH, and the model's ``input_size`` attribute, (C, H, W), sets the
input, 3x224x224 without one)."""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from torch import nn

from ._common import UsageError


# The MODEL argument's help, one text for verify, bench models and profile.
MODEL_HELP = ("zoo name (fastblocks list), hf:<transformers config> (e.g. hf:MobileNetV2) or "
              "package.module:factory for your own (imported from the current directory or "
              "PYTHONPATH; the model's input_size attribute (C, H, W) sets the input, else 3x224x224)")


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
    if not module_name or not fn_name:
        raise UsageError(f"{spec!r}: give your own model as package.module:factory "
                         "(a function returning an nn.Module, called with no arguments)")
    # The `fastblocks` console script has its bin/ folder as sys.path[0], not the current
    # directory as `python -m fastblocks.cli` has: look there too, so `fastblocks verify
    # mymodel:make` finds the mymodel.py beside the user, whichever way they started us.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} of {spec!r}: {exc} (looked in the current "
                         f"directory {os.getcwd()} and on PYTHONPATH)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UsageError(f"{spec!r}: {module_name} has no attribute {fn_name!r}" if fn is None
                         else f"{spec!r}: {module_name}.{fn_name} is not callable")
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
