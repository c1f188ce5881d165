"""``fastblocks.optimize(model)`` / ``fastblocks.revert(model)``: swap fastblocks' fused blocks
into an existing model, and back.

    model = fastblocks.optimize(model)        # a copy; inplace=True changes model itself
    # (``fastblocks.optimize`` is this function; the package is importable by its full
    #  name: ``from fastblocks.optimize import Report, ModuleRule``)
    print(model.fastblocks_report)            # what was swapped (pattern, count), what was kept
    plain = fastblocks.revert(model)          # the torch.nn modules again

What it swaps (rules/, in this order):
- conv -> BatchNorm2d -> activation chains (rules/conv_bn_act.py), any groups, in any block
  whose forward calls them in a row: nn.Sequential runs, torchvision's Conv2dNormActivation,
  timm's ConvNormAct (with BatchNormAct2d, a BN applying its activation itself), Hugging
  Face's *ConvLayer (TF padding in between), the zoo's blocks, user blocks with any attribute
  names. Exact in both modes (eval: BN folded, cached; train: batch statistics and running
  statistics as nn.BatchNorm2d); a training-mode BN is never folded.
- activations written inline in a traceable block's forward (rules/inline.py):
  ``x * torch.sigmoid(x)``, ``x * F.relu6(x + 3) / 6``, ... become one op, and an activation
  right after a fused chain moves into its epilogue.
- squeeze-excite blocks (rules/squeeze_excite.py): torchvision's/the zoo's SqueezeExcitation,
  timm's SqueezeExcite/SEModule, Hugging Face's EfficientNet SE, SE-ResNet Sequential(FC, act,
  FC, gate) blocks, each proven by a float64 probe -> fastblocks.nn.SqueezeExcite (one fused
  op); SE written inline (pool -> 1x1 conv -> act -> 1x1 conv -> gate -> multiply) likewise.
  On CPU tensors without autograd, eager's composition (measured as fast there).
- channel shuffles (rules/shuffle.py): nn.ChannelShuffle and inline view -> transpose -> view
  shuffles -> ops.channel_shuffle; ``torch.cat([a, b], 1)`` read only by a shuffle ->
  ops.concat_shuffle. On CPU tensors, eager where it measured faster (small/training).
- a fused conv -> BN -> act chain read only by a channel shuffle (rules/chain_shuffle.py, after
  the block's children, so also a chain inside a child Sequential): ShuffleNet v1's 1x1 GConv
  -> BN -> ReLU -> shuffle runs as one ops.grouped_conv2d(shuffle_groups) call in eval mode
  (BN folded), as the exact BN chain then the shuffle in training; the shuffle becomes an
  identity.
- depthwise convs (rules/depthwise.py): nn.Conv2d with groups == in_channels, and subclasses
  padding TensorFlow-"same" in their forward (timm's Conv2dSame).
- activation modules (rules/activation.py): Hardswish, Hardsigmoid, ReLU6, SiLU and any
  module computing one of them (recognised by behaviour: _probe.py). On CPU tensors they run
  eager's kernels, measured faster there for a standalone activation.

Patterns are proven, not guessed from names: from the torch.fx graph of each block (children
as leaves; one graph per training mode and boolean flag; _trace.py), or, where fx cannot trace
a block (the report says so), by running a copy of it fused and unfused on a probe input in
train and eval mode. Modules used in several places are never fused away.

The contract (DESIGN.md, "optimize(): the swap contract"): ``parameters()``,
``named_parameters()`` and ``state_dict()`` keys, values and order are unchanged; the model's
mode is kept and ``.train()``/``.eval()`` switch the fused modules too; the result works with
torch.compile(fullgraph=True), torch.export, autocast, ``.to()``, channels_last, deepcopy,
pickling and DistributedDataParallel.

How: most swaps change only a module's class in place (_classswap.py): the module object, its
tensors, its name in its parent and the parent's forward all stay. A swap that needs a new
object (a ModuleRule returning one) must keep the state_dict keys and share the tensors; the
original object is kept on the new one for revert(). One visible difference: a forward hook
on a fused conv sees the whole chain's output, and one on its BN or activation sees that
output passed through.

Adding an op family's swap: one file in rules/ with a rule object, appended to MODULE_RULES or
BLOCK_RULES in rules/__init__.py:

    class SqueezeExciteRule(ModuleRule):             # fastblocks/optimize/rules/squeeze_excite.py
        pattern = "squeeze-excite"
        def apply(self, module, ctx):
            try:
                new = fbnn.SqueezeExcite.from_module(module)   # TypeError/ValueError: not an SE
            except (TypeError, ValueError):
                return None
            return Swap(new, "squeeze-excite")       # or Keep("why it stays eager")

``ModuleRule.apply(module, ctx)`` sees every module not already fused (parents before
children; swapping a module with children takes its whole subtree) and returns Swap, Keep or
None. ``BlockRule.apply(block, graph, ctx)`` sees each block with its torch.fx graph (children
as leaves; None where fx cannot trace it) and fuses patterns spanning several children
(``ctx.consume`` the modules it fused). ``ctx.activation(m)`` tells which fused activation a
module computes, ``ctx.shared(m)`` whether it sits in several places of the model.
"""
from ._api import optimize, revert
from ._report import Report
from ._rule import BlockRule, Context, Keep, ModuleRule, Swap

__all__ = ["optimize", "revert", "Report", "ModuleRule", "BlockRule", "Context", "Swap", "Keep"]
