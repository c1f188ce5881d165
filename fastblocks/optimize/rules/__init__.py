"""The pattern rules optimize() applies, in order (see the package docstring for how to add
one). BLOCK_RULES run on each block before its children are visited; MODULE_RULES then swap
single modules (a ModuleRule that swaps a module with children takes its whole subtree)."""
from .activation import ActivationRule, SwappedActivation
from .conv_bn_act import ConvBNActRule
from .depthwise import DepthwiseRule
from .inline import InlineActivationRule
from .shuffle import ChannelShuffleModuleRule, InlineShuffleRule
from .squeeze_excite import InlineSqueezeExciteRule, SqueezeExciteRule

BLOCK_RULES = [ConvBNActRule(), InlineSqueezeExciteRule(), InlineShuffleRule(),
               InlineActivationRule()]
MODULE_RULES = [SqueezeExciteRule(), ChannelShuffleModuleRule(), DepthwiseRule(), ActivationRule()]

__all__ = ["BLOCK_RULES", "MODULE_RULES", "SwappedActivation"]
