"""The architecture zoo: ``create_model(name, fused=True)`` and ``list_models()``.

One file per family; importing this package registers every model (see _registry.py).
"""
from ._registry import ModelInfo, create_model, list_models, model_info, normalize_input, register_model

# family files register their models on import (keep this list sorted)
from . import _families  # noqa: E402,F401

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "normalize_input", "register_model"]
