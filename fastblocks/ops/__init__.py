"""Functional fastblocks ops: validated, registered with torch.library, backend-dispatched."""
from .activation import activation, hardsigmoid, hardswish, relu, relu6, silu

__all__ = ["activation", "hardsigmoid", "hardswish", "relu", "relu6", "silu"]
