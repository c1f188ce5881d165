"""SqueezeExcite: a drop-in for torchvision's ``SqueezeExcitation`` (and, through
``from_module``, timm's, Hugging Face EfficientNet's and SE-ResNet-style SE blocks) running
fastblocks' fused squeeze-and-excitation op."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .. import ops

# Activation after fc1 (torch.nn classes, then other libraries' classes and functions by name).
_ACT_TYPES = ((nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.SiLU, "silu"),
              (nn.Hardswish, "hardswish"), (nn.Hardsigmoid, "hardsigmoid"),
              (nn.Identity, "none"))
_GATE_TYPES = ((nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "hardsigmoid"))
# class or function names, lowercased without "_" (timm's Swish, HardSwish, HardSigmoid,
# Sigmoid, hard_sigmoid; Hugging Face's SiLUActivation; fastblocks.nn's own modules)
_ACT_NAMES = {"relu": "relu", "relu6": "relu6", "silu": "silu", "swish": "silu",
              "siluactivation": "silu", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
              "identity": "none"}
_GATE_NAMES = {"sigmoid": "sigmoid", "hardsigmoid": "hardsigmoid"}


def _name_of(fn, types, names, what: str) -> str:
    if isinstance(fn, nn.Module):
        for cls, name in types:
            if isinstance(fn, cls):
                return name
    key = getattr(fn, "__name__", type(fn).__name__).lower().replace("_", "")
    if key in names:
        return names[key]
    raise TypeError(f"SqueezeExcite supports {what} {sorted(set(names.values()))}, got {fn!r}")


def activation_name(fn) -> str:
    """The fastblocks name of an SE block's activation module or function."""
    return _name_of(fn, _ACT_TYPES, _ACT_NAMES, "activation")


def gate_name(fn) -> str:
    """The fastblocks name ("sigmoid"/"hardsigmoid") of an SE block's gate."""
    return _name_of(fn, _GATE_TYPES, _GATE_NAMES, "gate")


# (fc1, fc2, activation, gate) attribute names of the SE blocks from_module knows, in order of
# lookup: torchvision's SqueezeExcitation (and fastblocks.models' copy), timm's SqueezeExcite
# (efficientnet_blocks) and SEModule (layers/squeeze_excite), Hugging Face's
# EfficientNetSqueezeExciteLayer.
_LAYOUTS = (("fc1", "fc2", "activation", "scale_activation"),
            ("conv_reduce", "conv_expand", "act1", "gate"),
            ("fc1", "fc2", "act", "gate"),
            ("reduce", "expand", "act_reduce", "act_expand"))
# Parameter-free children that these blocks may hold besides the four above.
_POOL_NAMES = ("avgpool", "avg_pool", "pool", "squeeze", "bn")


def _fc_ok(m) -> bool:
    """A Linear, or a 1x1 Conv2d that is a matrix product on a 1x1 map."""
    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
            and m.stride == (1, 1) and m.padding in ((0, 0), "same", "valid"))


def _find_layout(m: nn.Module) -> tuple[str, str, object, object]:
    """(fc1 path, fc2 path, activation, gate) of a supported SE block, or TypeError."""
    children = dict(m.named_children())
    for fc1, fc2, act, gate in _LAYOUTS:
        if fc1 in children and fc2 in children and hasattr(m, act) and hasattr(m, gate):
            if "bn" in children and not isinstance(children["bn"], nn.Identity):
                raise TypeError("SqueezeExcite.from_module: an SE block with a norm between its "
                                f"FC layers is not supported ({type(m).__name__}.bn)")
            if getattr(m, "add_maxpool", False):
                raise TypeError("SqueezeExcite.from_module: SE with max pooling (timm "
                                "add_maxpool=True) is not supported")
            return fc1, fc2, getattr(m, act), getattr(m, gate)
    # SE-ResNet style: a Sequential (FC, activation, FC, gate), e.g. `fc` of the classic SELayer
    for name, seq in children.items():
        if isinstance(seq, nn.Sequential) and len(seq) == 4 and _fc_ok(seq[0]) and _fc_ok(seq[2]):
            return f"{name}.0", f"{name}.2", seq[1], seq[3]
    raise TypeError(
        f"SqueezeExcite.from_module does not recognise {type(m).__name__}: expected torchvision's "
        "SqueezeExcitation (fc1, fc2, activation, scale_activation), timm's SqueezeExcite "
        "(conv_reduce, conv_expand, act1, gate) or SEModule (fc1, fc2, act, gate), Hugging Face's "
        "EfficientNet SE (reduce, expand, act_reduce, act_expand), or a Sequential "
        "(FC, activation, FC, gate)")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation, ``x * gate(fc2(act(fc1(avgpool(x)))))``, in one fused op.

    Same constructor arguments, submodules (``avgpool``, ``fc1`` and ``fc2`` 1x1 convs,
    ``activation``, ``scale_activation``), initialisation and state_dict as torchvision's
    ``SqueezeExcitation``. ``activation`` may be nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish,
    nn.Hardsigmoid or nn.Identity; ``scale_activation`` nn.Sigmoid or nn.Hardsigmoid.

    Shapes: (N, C, H, W) or (C, H, W) -> same, C = input_channels; NCHW or channels_last.

    Hu et al., "Squeeze-and-Excitation Networks" (2018).
    """

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()
        self._bind("fc1", "fc2", self.activation, self.scale_activation)

    def _bind(self, fc1: str, fc2: str, act, gate) -> None:
        self._fc_paths = (tuple(fc1.split(".")), tuple(fc2.split(".")))
        self.act_name = activation_name(act)
        self.gate_name = gate_name(gate)

    def _fc(self, path: tuple[str, ...]) -> nn.Module:
        m = self
        for part in path:
            m = getattr(m, part)
        return m

    def forward(self, x: Tensor) -> Tensor:
        fc1, fc2 = self._fc(self._fc_paths[0]), self._fc(self._fc_paths[1])
        return ops.squeeze_excite(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, self.act_name,
                                  self.gate_name)

    def extra_repr(self) -> str:
        return f"activation={self.act_name}, gate={self.gate_name}"

    @classmethod
    def from_module(cls, m: nn.Module) -> "SqueezeExcite":
        """Build from an eager SE block, sharing its submodules and parameters.

        Recognised: torchvision's ``SqueezeExcitation`` (and fastblocks.models' copy), timm's
        ``SqueezeExcite`` (conv_reduce/conv_expand) and ``SEModule`` (fc1/fc2; bn must be
        Identity, no add_maxpool), Hugging Face's EfficientNet SE layer (reduce/expand), and
        SE-ResNet-style blocks whose FCs sit in a Sequential (Linear or 1x1 conv, activation,
        Linear or 1x1 conv, gate). The new module holds the same children under the same names,
        so ``state_dict()`` keys and ``named_parameters()`` are unchanged and a checkpoint loads
        into either. Raises TypeError for anything else (another structure, an unsupported
        activation or gate, FC layers that are not plain matrix products).
        """
        if not isinstance(m, nn.Module):
            raise TypeError(f"from_module expects an nn.Module, got {type(m).__name__}")
        fc1_path, fc2_path, act, gate = _find_layout(m)
        if m._parameters or m._buffers:
            raise TypeError(f"{type(m).__name__} holds parameters or buffers of its own "
                            f"({list(m._parameters) + list(m._buffers)}); not an SE block from_module knows")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, child in m.named_children():
            new.add_module(name, child)
        new._bind(fc1_path, fc2_path, act, gate)
        fc1, fc2 = new._fc(new._fc_paths[0]), new._fc(new._fc_paths[1])
        for fc, name in ((fc1, fc1_path), (fc2, fc2_path)):
            if not _fc_ok(fc):
                raise TypeError(f"{name} must be an nn.Linear or a 1x1 nn.Conv2d (stride 1, no "
                                f"padding, groups 1), got {fc!r}")
        c_r, c = fc1.weight.shape[:2]
        if tuple(fc2.weight.shape[:2]) != (c, c_r):
            raise TypeError(f"{fc2_path} maps {fc2.weight.shape[1]} -> {fc2.weight.shape[0]} "
                            f"features; it must map {c_r} -> {c} to undo {fc1_path}")
        new.train(m.training)
        return new

