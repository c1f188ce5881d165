"""Drop-in torch.nn modules backed by fastblocks ops."""
from .activation import Hardsigmoid, Hardswish, ReLU6, SiLU

__all__ = ["Hardsigmoid", "Hardswish", "ReLU6", "SiLU"]
