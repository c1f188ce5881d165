"""Functional fastblocks ops: validated, registered with torch.library, backend-dispatched."""
from .activation import apply_activation, hardsigmoid, hardswish, relu, relu6, silu
from .depthwise import depthwise_conv2d
from .conv_bn_act import conv_bias_act, conv_bn_act
from .conv_bias_add_act import conv_bias_add_act
from .shuffle import channel_shuffle, concat_shuffle
from .grouped_conv import grouped_conv2d
from .squeeze_excite import squeeze_excite

__all__ = ["apply_activation", "channel_shuffle", "concat_shuffle", "conv_bias_act", "conv_bias_add_act", "conv_bn_act",
           "depthwise_conv2d", "grouped_conv2d", "hardsigmoid", "hardswish", "relu", "relu6", "silu",
           "squeeze_excite"]
from .inverted_residual import inverted_residual  # noqa: E402

__all__ += ["inverted_residual"]
