"""conv -> BatchNorm -> activation chains, fused in place (any groups; exact in both modes).

Where a block calls a conv, feeds its output only to a BatchNorm2d and that BN's output only
to an activation (or to anything else: the chain is then conv -> BN), the three modules keep
their objects, names, parameters and buffers, and only their classes change:

- the conv becomes a ``ConvBNActHead`` whose forward computes the whole chain with
  ``fastblocks.nn.conv_bn_act.conv_bn_act_forward`` (eval: BN folded into the conv's weight and
  bias, cached by tensor versions, through ``ops.conv_bias_act``; train: batch statistics and
  running statistics as nn.BatchNorm2d). The BN is referenced, not registered, by the head;
- the BN becomes a ``BatchNormFusedIntoConv`` and the activation an
  ``ActivationFusedIntoConv``: both return their input.

So the block's own forward (torchvision's Conv2dNormActivation, an nn.Sequential run, Hugging
Face's ``*ConvLayer`` with TF padding in between, timm's ConvNormAct, the zoo's blocks, a
user's trio under any attribute names) runs unchanged and gets the fused chain. What counts as
a chain is proven:
- traceable blocks (torch.fx, children as leaves): from the graph (each module called once,
  each intermediate used once, by the next step only, and no module shared elsewhere);
- blocks fx cannot trace (Hugging Face's MobileNet conv layers pad with Python ints of the
  input size): candidates are registered-order runs (conv, BN[, act]) of direct children, and a
  run is fused only when the block's outputs and running statistics, on a random input in
  train and in eval mode, equal the unfused block's (on copies).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ...nn._activation_names import UNKNOWN
from ...nn.conv_bn_act import _EAGER_ACT, _is_compiling, conv_bn_act_forward
from .._classswap import restore_class, swap_class
from .._padding import conv_kind, tf_same_padding
from .._rule import BlockRule


class ConvBNActHead(nn.Conv2d):
    """The conv of a fused conv -> BN -> activation chain: computes all three. Parameters are
    the conv's own; the BN (``_fb_bn``) and the activation name live in ``__dict__``.
    Shapes: (N, C_in, H, W) -> (N, C_out, OH, OW)."""

    def forward(self, x: Tensor) -> Tensor:
        d = self.__dict__
        if not _is_compiling():  # conv_bn_act_forward's eval fast path, one call frame less
            plan = d.get("_conv_plan")
            if plan is not None and len(plan) > 2 and plan[2].call is not None:
                y = plan[2].call(x, self, d["_fb_bn"], d["_fb_activation"])
                if y is not None:
                    return y
        if d["_fb_same_pad"]:  # TF "SAME": symmetric part as the conv's padding, no copy
            x, padding = tf_same_padding(x, self)
            return conv_bn_act_forward(self, x, self, d["_fb_bn"], d["_fb_activation"], padding)
        return conv_bn_act_forward(self, x, self, d["_fb_bn"], d["_fb_activation"])

    def extra_repr(self) -> str:
        act = self.__dict__["_fb_activation"]
        return super().extra_repr() + f", fused: -> BatchNorm2d -> {act or 'identity'}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fold_cache", None)  # derived from the tensors; refolded on first use
        return state


class TFSamePaddedChainBlock(nn.Module):
    """A block proven (by probe) to compute its fused chain after TensorFlow "SAME" padding of
    its input (Hugging Face's MobileNet conv layers, whose ``apply_tf_padding`` copies the
    input into a padded tensor before every conv, 1x1 ones included): its chain's head pads
    instead, without a copy where the padding is symmetric or zero."""

    def forward(self, x: Tensor) -> Tensor:
        return self._modules[self.__dict__["_fb_head"]](x)


class BatchNormFusedIntoConv(nn.BatchNorm2d):
    """A BatchNorm2d whose work the preceding ConvBNActHead does: returns its input."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return nn.BatchNorm2d.extra_repr(self) + ", fused into the conv before it"


class ActivationFusedIntoConv(nn.Module):
    """An activation the preceding ConvBNActHead applies: returns its input."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.__dict__['_fb_name']}, fused into the conv before it"


_NOT_BN = object()


def _bn_kind(bn: nn.Module, conv: nn.Conv2d, ctx):
    """What a module after ``conv`` is: ``_NOT_BN`` (not fusable), None (a BatchNorm2d), or the
    activation name of a BatchNorm2d subclass that applies one in its own forward (timm's
    BatchNormAct2d: BN, then ``drop`` and ``act`` children), recognised by behaviour."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels:
        return _NOT_BN
    if type(bn).forward is nn.BatchNorm2d.forward:
        return _NOT_BN if bn._modules else None
    key = ("bn_act", id(bn))
    if key not in ctx.cache:
        ctx.cache[key] = _probe_bn_act(bn, ctx)
    return ctx.cache[key]


def _probe_bn_act(bn: nn.BatchNorm2d, ctx):
    """The activation a BatchNorm2d subclass applies after normalising (None: identity), if its
    outputs and running statistics equal nn.BatchNorm2d's followed by that activation, in
    train mode (twice) and eval mode on a random input; else _NOT_BN."""
    names = {ctx.activation(m) for m in bn.children()} - {None}
    if len(names) > 1 or UNKNOWN in names:
        return _NOT_BN
    name = names.pop() if names else None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            theirs, ref = copy.deepcopy(bn), copy.deepcopy(bn)
            x = torch.randn(3, bn.num_features, 3, 4, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64).to(bn.weight.device if bn.weight is not None
                                                    else None, torch.float32)
            for mode in (True, True, False):
                theirs.train(mode), ref.train(mode)
                want = nn.BatchNorm2d.forward(ref, x)
                want = want if name is None else _EAGER_ACT[name](want)
                torch.testing.assert_close(theirs(x), want)
            torch.testing.assert_close(theirs.state_dict(), ref.state_dict())
    except Exception:  # noqa: BLE001 - not shown equal
        return _NOT_BN
    finally:
        torch.set_num_threads(threads)
    return name


def fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module | None, act_name: str | None,
         kind: str) -> None:
    """Swap the classes of a proven chain (module docstring). ``act``: the activation module
    after the BN (None when there is none, or when the BN applies ``act_name`` itself)."""
    swap_class(conv, ConvBNActHead, _fb_bn=bn, _fb_activation=act_name,
               _fb_same_pad=kind == "tf_same")
    try:
        swap_class(bn, BatchNormFusedIntoConv)
        if act is not None:
            swap_class(act, ActivationFusedIntoConv, _fb_name=act_name)
    except TypeError:  # an activation class with __slots__: undo all of it
        for m in (conv, bn):
            if "_fastblocks_swapped" in m.__dict__:
                restore_class(m)
        raise


def _describe(conv, act_name, kind) -> str:
    dw = conv.groups == conv.in_channels and conv.groups > 1
    what = "depthwise conv" if dw else ("conv" if conv.groups == 1 else "grouped conv")
    pad = " (TF same padding)" if kind == "tf_same" else ""
    return f"{what}{pad} -> BN -> {act_name or 'identity'}"


class ConvBNActRule(BlockRule):
    pattern = "conv -> BN -> act"

    def apply(self, block: nn.Module, graphs, ctx) -> None:
        if graphs is not None:
            self._from_graphs(block, graphs, ctx)
        else:
            self._by_probe(block, ctx)

    # -- traced blocks ------------------------------------------------------------------------

    def _free(self, module, ctx) -> bool:
        return id(module) not in ctx.consumed and not ctx.shared(module)

    def _from_graphs(self, block, graphs, ctx) -> None:
        found = [self._chains(block, g, ctx) for g in graphs]
        for chain in found[0]:
            if all(chain in other for other in found[1:]):
                self._fuse_chain(block, chain, ctx)
            elif all(chain[:2] in {c[:2] for c in other} for other in found[1:]):
                # the act differs between graphs: conv -> BN (with the BN's own act, if any)
                self._fuse_chain(block, chain[:2] + (None, _bn_kind(
                    block.get_submodule(chain[1]), block.get_submodule(chain[0]), ctx)), ctx)

    def _chains(self, block, graph, ctx) -> list[tuple]:
        """(conv target, bn target, act target or None, act name) of each proven chain in one
        graph."""
        calls: dict[str, int] = {}
        for n in graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        chains = []
        for n in graph.nodes:
            if n.op != "call_module" or calls[n.target] != 1 or len(n.users) != 1:
                continue
            conv = block.get_submodule(n.target)
            if not isinstance(conv, nn.Conv2d) or not self._free(conv, ctx):
                continue
            (b,) = n.users
            if b.op != "call_module" or b.args != (n,) or b.kwargs or calls[b.target] != 1:
                continue
            bn = block.get_submodule(b.target)
            bn_act = _bn_kind(bn, conv, ctx)
            if bn_act is _NOT_BN or not self._free(bn, ctx):
                continue
            act, act_name = None, bn_act
            if len(b.users) == 1 and bn_act is None:
                (a,) = b.users
                if (a.op == "call_module" and a.args == (b,) and not a.kwargs
                        and calls[a.target] == 1):
                    cand = block.get_submodule(a.target)
                    name = ctx.activation(cand)
                    if name is not UNKNOWN and name is not None and self._free(cand, ctx):
                        act, act_name = a.target, name
            chains.append((n.target, b.target, act, act_name))
        return chains

    def _fuse_chain(self, block, chain, ctx) -> None:
        conv = block.get_submodule(chain[0])
        kind = conv_kind(conv)
        if kind is None:
            ctx.report.keep(f"{type(conv).__name__} -> BN: the conv's own forward is not one "
                            "fastblocks reproduces, kept eager", ctx.child_path(chain[0]))
            return
        act = block.get_submodule(chain[2]) if chain[2] else None
        self._swap(conv, block.get_submodule(chain[1]), act, chain[3], kind, ctx, chain[0])

    def _swap(self, conv, bn, act, act_name, kind, ctx, where) -> bool:
        try:
            fuse(conv, bn, act, act_name, kind)
        except TypeError:
            if act is None:
                return False
            fuse(conv, bn, None, None, kind)
            act_name = None
        ctx.consume(conv, bn, act, *bn.children())
        ctx.report.swap(_describe(conv, act_name, kind), ctx.child_path(where))
        return True

    def _pad_in_head(self, block, conv_name, members, ctx) -> None:
        """A block that is only TF-"SAME" padding around its chain (Hugging Face's MobileNet
        conv layers) lets the head pad, without copying x where the padding is symmetric:
        proven by a probe on inputs of odd and even sizes."""
        conv = block._modules[conv_name]
        if (set(block._modules) - set(members) or conv.padding != (0, 0)
                or conv.padding_mode != "zeros" or conv.__dict__["_fb_same_pad"]):
            return
        if _probe_equal(block, lambda m: _pad_into_head(m, conv_name), _probe_sizes(block)):
            _pad_into_head(block, conv_name)
            ctx.report.move(ctx.child_path(conv_name), "", " (TF same padding in the kernel)")

    # -- blocks fx cannot trace ---------------------------------------------------------------

    def _runs(self, block, ctx):
        kids = list(block._modules.items())
        for i, (name, conv) in enumerate(kids[:-1]):
            bn = kids[i + 1][1]
            if not isinstance(conv, nn.Conv2d):
                continue
            bn_act = _bn_kind(bn, conv, ctx)
            if bn_act is _NOT_BN or not (self._free(conv, ctx) and self._free(bn, ctx)):
                continue
            if bn_act is not None:
                yield name, kids[i + 1][0], None, bn_act
                continue
            act = kids[i + 2][1] if i + 2 < len(kids) else None
            act_name = ctx.activation(act) if act is not None else None
            if act is None or act_name is UNKNOWN or act_name is None or not self._free(act, ctx):
                act, act_name = None, None
            yield name, kids[i + 1][0], (kids[i + 2][0] if act is not None else None), act_name

    def _by_probe(self, block, ctx) -> None:
        runs = list(self._runs(block, ctx))
        if not runs:
            return
        for conv_name, bn_name, act_name_attr, act_name in runs:
            conv = block._modules[conv_name]
            kind = conv_kind(conv)
            if kind is None:
                continue
            options = [(act_name_attr, act_name)] + ([(None, None)] if act_name_attr else [])
            if act_name_attr is None and act_name is not None:  # the BN applies it itself
                options = [(None, act_name)]
            for act_attr, name in options:
                if _equal_when_fused(block, (conv_name, bn_name, act_attr, name, kind)):
                    act = block._modules[act_attr] if act_attr else None
                    if self._swap(conv, block._modules[bn_name], act, name, kind, ctx, conv_name):
                        ctx.report.note(f"{type(block).__name__} could not be traced by torch.fx; "
                                        "its conv -> BN -> act runs were fused after a probe "
                                        "showed equal outputs and running statistics",
                                        about=type(block).__name__,
                                        more="its conv -> BN -> act runs were fused after a "
                                             "probe showed equal outputs and running statistics")
                        self._pad_in_head(block, conv_name, (conv_name, bn_name, act_attr), ctx)
                    break
            else:
                ctx.report.keep(f"{type(block).__name__} (not traceable): fusing its "
                                f"{conv_name} -> {bn_name} was not shown equal on a probe, kept "
                                "eager", ctx.child_path(conv_name))


def _probe_sizes(block: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two small input sizes (H, W), odd and even in each dimension, above the largest
    kernel of ``block`` (small: a probe of a 1280-channel layer stays cheap)."""
    k = max((max(m.kernel_size) * max(m.dilation) for m in block.modules()
             if isinstance(m, nn.Conv2d)), default=1)
    return (k + 3, k + 4), (k + 4, k + 3)


def _probe_channels(block: nn.Module) -> list[int]:
    """Candidate input channel counts of ``block`` (unknown without tracing): the in_channels
    of its first convs in definition order; the first a forward accepts is the one."""
    seen: list[int] = []
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels not in seen:
            seen.append(m.in_channels)
    return seen[:4]


def _equal_when_fused(block: nn.Module, run) -> bool:
    """Whether a copy of ``block`` with ``run`` fused equals the unfused block (_probe_equal)."""
    conv_name, bn_name, act_attr, act_name, kind = run

    def transform(m):
        fuse(m._modules[conv_name], m._modules[bn_name],
             m._modules[act_attr] if act_attr else None, act_name, kind)
    return _probe_equal(block, transform, _probe_sizes(block)[:1])


def _pad_into_head(m: nn.Module, conv_name: str) -> None:
    m._modules[conv_name].__dict__["_fb_same_pad"] = True
    swap_class(m, TFSamePaddedChainBlock, _fb_head=conv_name)


def _probe_equal(block: nn.Module, transform, sizes) -> bool:
    """Whether a copy of ``block`` changed by ``transform`` gives the unchanged copy's outputs
    and running statistics, in train mode (two steps) and in eval mode, on random inputs of
    each (H, W) in ``sizes`` (and the first channel count in _probe_channels that the block
    accepts), computed in float64."""
    threads = torch.get_num_threads()
    try:
        # one thread: tiny tensors, and OpenMP spinning on a busy machine cost 100x
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            # in float64: rounding differences between equal computations stay far below
            # assert_close's tolerance even where a tiny probe's batch variance amplifies them
            plain, fused = copy.deepcopy(block).double(), copy.deepcopy(block).double()
            transform(fused)
            p = next(plain.parameters())
            for c in _probe_channels(block):
                x = torch.randn(2, c, *sizes[0], generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64).to(p.device, p.dtype)
                try:
                    with torch.no_grad():
                        plain.eval()(x)  # eval: no running-statistics update
                    break
                except Exception:  # noqa: BLE001 - not this channel count
                    continue
            else:
                return False
            for size in sizes:
                x = torch.randn(2, c, *size, generator=torch.Generator().manual_seed(1),
                                dtype=torch.float64).to(p.device, p.dtype)
                for mode in (True, True, False):
                    outs = []
                    for m in (plain, fused):
                        m.train(mode)
                        torch.manual_seed(0)
                        with torch.no_grad():
                            outs.append(m(x))
                    torch.testing.assert_close(outs[1], outs[0])
            torch.testing.assert_close(fused.state_dict(), plain.state_dict())
        return True
    except Exception:  # noqa: BLE001 - any failure means "not proven"
        return False
    finally:
        torch.set_num_threads(threads)
