"""Drop-in torch.nn modules backed by fastblocks ops."""
from ._fold import fold_batchnorm
from .activation import Hardsigmoid, Hardswish, ReLU6, SiLU
from .conv_bn_act import ConvBNAct
from .depthwise import DepthwiseConv2d
from .shuffle import ChannelShuffle, GroupedConv2d
from .squeeze_excite import SqueezeExcite

__all__ = ["ChannelShuffle", "ConvBNAct", "DepthwiseConv2d", "GroupedConv2d", "Hardsigmoid", "Hardswish", "ReLU6", "SiLU",
           "SqueezeExcite",
           "fold_batchnorm"]
