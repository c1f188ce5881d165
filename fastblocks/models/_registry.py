"""The model registry: ``create_model(name, ...)`` and ``list_models(pattern)``.

Each family file under fastblocks/models/ defines its architectures from plain PyTorch modules
and registers one builder per name with ``@register_model``. A builder takes
``num_classes`` and the variant's own keyword arguments and returns an ``nn.Module`` that uses
no fastblocks module; ``create_model(..., fused=True)`` is ``fastblocks.optimize()`` of it,
the same swap path users call on their own models.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info",
           "normalize_input"]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one architecture.

    name: the registered name (shared/ARCHITECTURES.md).
    builder: ``builder(num_classes=..., **kwargs) -> nn.Module`` (plain PyTorch modules).
    family: the file it lives in ("mobilenet", "efficientnet", ...).
    input_size: native (C, H, W) input, e.g. (3, 224, 224).
    paper: the source of the architecture.
    pretrained: {tag: loader} for weights that can be loaded here (see create_model).
    mean, std: per-channel input normalisation the pretrained weights expect, for inputs in
        [0, 1] (``normalize_input``); ImageNet's by default.
    """
    name: str
    builder: Callable[..., nn.Module]
    family: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    paper: str = ""
    pretrained: dict[str, Callable[[nn.Module], None]] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, input_size=(3, 224, 224), paper: str = "",
                   pretrained: dict | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Decorator registering ``builder`` under ``name``; a second registration of a name raises."""
    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, family, tuple(input_size), paper,
                                    dict(pretrained or {}), tuple(mean), tuple(std))
        return builder
    return wrap


def did_you_mean(name: str, choices) -> str:
    """"; did you mean a, b?" with up to 5 of ``choices`` close to ``name`` (difflib), or ""
    when none is: the hint of every unknown-name error (models here, ops in `bench ops`)."""
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def model_info(name: str) -> ModelInfo:
    """The ModelInfo of ``name``; an unknown name raises ValueError listing close matches."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)} (fastblocks.list_models() lists all "
                         f"{len(_REGISTRY)})")
    return _REGISTRY[name]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters them with shell wildcards
    (``"mobilenet*"``, ``"efficientnet_b?"``)."""
    names = sorted(_REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def create_model(name: str, *, fused: bool = True, pretrained=False, num_classes: int | None = None,
                 **kwargs) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: a name of ``list_models()``.
        fused: True returns ``fastblocks.optimize(model)`` (fastblocks modules swapped in,
            same parameters and state_dict keys); False the plain PyTorch model.
        pretrained: False; True for the model's default weights (where the registry knows a
            source, else ValueError); or a path to a state_dict file (``torch.save``), loaded
            with ``strict=True``.
        num_classes: outputs of the classifier (or the task's output size); default the
            model's own (1000 for ImageNet models, 10 for the CIFAR ones).
        **kwargs: the variant's own knobs (width multiplier, dropout, ...).

    Returns: an ``nn.Module`` in train mode (as torch.nn models are built).

    Raises: ValueError for an unknown name (with close matches) or pretrained weights that
    do not exist; ImportError naming the package that holds a model's weights when it is
    missing.
    """
    info = model_info(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = info.builder(**kwargs)
    if pretrained is True:
        if not info.pretrained:
            raise ValueError(f"no pretrained weights are known for {name!r}; pass a state_dict "
                             "path as pretrained=")
        next(iter(info.pretrained.values()))(model)
    elif pretrained:
        import torch
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    if fused:
        from ..optimize import optimize
        model = optimize(model, inplace=True)
    return model


def normalize_input(name: str, x):
    """``(x - mean) / std`` with the normalisation model ``name``'s pretrained weights expect;
    x: (N, 3, H, W) with values in [0, 1]."""
    info = model_info(name)
    mean = x.new_tensor(info.mean).view(1, -1, 1, 1)
    std = x.new_tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std
