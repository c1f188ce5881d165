"""nn.Conv2d's non-zero padding modes, once for every fastblocks conv module."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def padded_input(conv: nn.Conv2d, x: Tensor) -> tuple[Tensor, object]:
    """(x, padding) to hand a conv op: as nn.Conv2d does, a "reflect"/"replicate"/"circular"
    padding_mode pads x first and convolves with padding 0; "zeros" leaves x and the conv's
    own padding to the op (which pads without a copy)."""
    if conv.padding_mode != "zeros":
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
    return x, conv.padding
