"""Drop-in torch.nn modules backed by fastblocks ops."""
from ._fold import fold_batchnorm
from .activation import Hardsigmoid, Hardswish, ReLU6, SiLU
from .conv_bn_act import ConvBNAct
from .depthwise import DepthwiseConv2d

__all__ = ["ConvBNAct", "DepthwiseConv2d", "Hardsigmoid", "Hardswish", "ReLU6", "SiLU", "fold_batchnorm"]
