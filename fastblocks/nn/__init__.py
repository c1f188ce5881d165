"""Drop-in torch.nn modules backed by fastblocks ops."""
from ._fold import fold_batchnorm
from .activation import Hardsigmoid, Hardswish, ReLU6, SiLU
from .depthwise import DepthwiseConv2d
from .squeeze_excite import SqueezeExcite

__all__ = ["DepthwiseConv2d", "Hardsigmoid", "Hardswish", "ReLU6", "SiLU", "SqueezeExcite",
           "fold_batchnorm"]
