"""Which fused-epilogue activation (a name of ``ops.apply_activation``) a module computes."""
from __future__ import annotations

from torch import nn

# exact types only: a subclass may change forward (subclasses are matched by optimize's rules)
_BY_TYPE: dict[type, str | None] = {
    nn.Identity: None,
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.SiLU: "silu",
}

_UNKNOWN = object()


def activation_name(module: nn.Module | None):
    """The activation name (None for identity) that ``module`` computes, or ``UNKNOWN`` when
    it is not one fastblocks fuses. fastblocks' own activation modules count as theirs."""
    if module is None:
        return None
    t = type(module)
    if t in _BY_TYPE:
        return _BY_TYPE[t]
    torch_cls = getattr(t, "torch_cls", None)  # fastblocks.nn.Hardswish & co.
    if torch_cls in _BY_TYPE and t.__module__.startswith("fastblocks."):
        return _BY_TYPE[torch_cls]
    return _UNKNOWN


UNKNOWN = _UNKNOWN
