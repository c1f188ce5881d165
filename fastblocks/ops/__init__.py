"""Functional fastblocks ops: validated, registered with torch.library, backend-dispatched."""
from .activation import apply_activation, hardsigmoid, hardswish, relu, relu6, silu
from .depthwise import depthwise_conv2d

__all__ = ["apply_activation", "depthwise_conv2d", "hardsigmoid", "hardswish", "relu", "relu6", "silu"]
