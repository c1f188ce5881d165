"""The pattern rules optimize() applies, in order (see the package docstring for how to add
one). BLOCK_RULES run on each block before its children are visited; MODULE_RULES then swap
single modules (a ModuleRule that swaps a module with children takes its whole subtree);
LATE_BLOCK_RULES run on each block after its children were visited (the block's graphs, or
an InlineFused replacement's own graph), for patterns spanning what its children fused."""
from .activation import ActivationRule, SwappedActivation
from .chain_shuffle import ChainShuffleRule
from .conv_bn_act import ConvBNActRule
from .depthwise import DepthwiseRule
from .inline import InlineActivationRule
from .shuffle import ChannelShuffleModuleRule, InlineShuffleRule
from .squeeze_excite import InlineSqueezeExciteRule, SqueezeExciteRule

BLOCK_RULES = [ConvBNActRule(), InlineSqueezeExciteRule(), InlineShuffleRule(),
               InlineActivationRule()]
LATE_BLOCK_RULES = [ChainShuffleRule()]
MODULE_RULES = [SqueezeExciteRule(), ChannelShuffleModuleRule(), DepthwiseRule(), ActivationRule()]

# appended: the inverted-residual fusion spans the chains fused above (after ChainShuffleRule)
from .chain_inverted_residual import ChainInvertedResidualRule  # noqa: E402

LATE_BLOCK_RULES.append(ChainInvertedResidualRule())

__all__ = ["BLOCK_RULES", "LATE_BLOCK_RULES", "MODULE_RULES", "SwappedActivation"]
