"""ConvBNAct: Conv2d -> BatchNorm2d -> activation as one module with BatchNorm's exact
semantics in both modes.

- eval (BN uses running statistics): BN is folded into the conv's weight and bias and the
  chain runs as ``ops.conv_bias_act``, one pass over the output. The folded tensors are cached
  and refolded when any parameter or buffer they come from changes (tensor version counters),
  so an optimizer step or load_state_dict between evaluations is seen. Under torch.compile the
  fold is computed inline, in the graph. With autograd recording on the parameters (gradients
  of an eval-mode model) the BN runs after the conv, unfolded, as eager does (see below).
- train (batch statistics): ``ops.conv_bn_act(training=True)``, with running statistics and
  ``num_batches_tracked`` updated exactly as ``nn.BatchNorm2d.forward`` does (momentum=None
  for the cumulative average). A training-mode BN is never folded.

The conv and BN are kept as submodules under names of the caller's choosing (default "conv",
"bn", "act"), so a module built from ``Sequential(conv, bn, act)`` with names ("0", "1", "2")
has exactly that Sequential's state_dict keys: optimize() swaps it in without renaming a
parameter, and ``to_modules()`` gives the plain modules back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .._backend import _selected as _selected_backend, get_backend
from ..ops.conv_bn_act import (conv_bias_act_plan, conv_bias_act_plan_ok, conv_bias_act_runner,
                               run_conv_bias_act_plan)
from ._activation_names import UNKNOWN, activation_name
from ..ops.grouped_conv import permute_output_channels
from ._fold import fold_batchnorm
from ._padding import padded_input

__all__ = ["ConvBNAct", "conv_bn_act_forward"]

_EAGER_ACT = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
              "hardsigmoid": F.hardsigmoid, "silu": F.silu}
_ACT_MODULES = {None: nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
                "hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU}


def _fold_key(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple:
    # the module dicts directly: nn.Module.__getattr__ and per-tensor tuples cost ~25 us here
    # against a 17 us 1x1 conv (timeit, 2-core dev box under load); dtype and device of the
    # weight catch `.to()`, which swaps a parameter's data under the same object; data_ptr
    # catches `p.data = t` (weight loading in user code), which keeps object, version and dtype
    p, q, r = conv._parameters, bn._parameters, bn._buffers
    w = p["weight"]
    return (id(w), w._version, w.dtype, w.device, w.data_ptr(), _ver(p.get("bias")),
            _ver(q.get("weight")), _ver(q.get("bias")), _ver(r.get("running_mean")),
            _ver(r.get("running_var")), bn.eps)


def _ver(t):
    return None if t is None else (id(t), t._version, t.dtype, t.data_ptr())


def _uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    return bn.training or bn.running_mean is None or bn.running_var is None


def conv_bn_act_forward(owner: nn.Module, x: Tensor, conv: nn.Conv2d,
                        bn: nn.modules.batchnorm._BatchNorm, activation: str | None,
                        padding=None, shuffle_groups: int | None = None,
                        shuffle=None) -> Tensor:
    """``act(bn(conv(x)))`` with nn.BatchNorm2d's semantics in the BN's current mode (see the
    module docstring); ``owner`` holds the eval-mode fold cache. x: (N, C_in, H, W).
    ``padding`` (int pair) replaces the conv's own zero padding (a caller that computes it
    per input, e.g. TensorFlow "SAME", passes it here instead of copying x into a padded
    tensor).

    ``shuffle_groups`` (a positive int dividing C_out; 4-d x): the output is channel-shuffled
    as ``nn.ChannelShuffle(shuffle_groups)`` does (ShuffleNet v1's 1x1 GConv -> BN -> ReLU ->
    shuffle). Eval mode without autograd: one ``ops.grouped_conv2d`` call with the folded
    weight and bias writes the activated output in shuffled order (an ungrouped conv: one
    ``ops.conv_bias_act`` with the folded weight's output channels permuted). Otherwise
    (training, gradients of an eval-mode model) the chain runs as without it and
    ``shuffle(y, shuffle_groups)`` (default ``ops.channel_shuffle``) shuffles its output."""
    if padding is None and shuffle_groups is None and not _is_compiling():
        plan = owner.__dict__.get("_conv_plan")
        if plan is not None and len(plan) > 2:  # eval inference like the last call (_EvalRunner)
            call = plan[2].call
            if call is not None:
                y = call(x, conv, bn, activation)  # None: not a call like the runner's (guard)
                if y is not None:
                    return y
    if shuffle_groups is not None:
        return _chain_then_shuffle(owner, x, conv, bn, activation, padding, shuffle_groups,
                                   shuffle or ops.channel_shuffle)
    own_padding = padding is None and conv.padding_mode == "zeros"
    if padding is None:
        x, padding = padded_input(conv, x)
    if _uses_batch_stats(bn):
        # nn.modules.batchnorm._BatchNorm.forward, step for step
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        track = not bn.training or bn.track_running_stats
        # F.batch_norm updates the running statistics inside its kernel without bumping their
        # version counters, so the eval-mode fold cached before this step would look current:
        # drop it (a validation pass under no_grad, then training, then validation again
        # evaluated with the first fold); the _EvalRunner made from it goes with it
        owner.__dict__.pop("_fold_cache", None)
        return ops.conv_bn_act(
            x, conv.weight, conv.bias, bn.weight, bn.bias,
            bn.running_mean if track else None, bn.running_var if track else None,
            training=True, momentum=factor, eps=bn.eps, stride=conv.stride, padding=padding,
            dilation=conv.dilation, groups=conv.groups, activation=activation)
    grad_needed = torch.is_grad_enabled() and any(
        p is not None and p.requires_grad for p in (conv.weight, conv.bias, bn.weight, bn.bias))
    if grad_needed:
        # gradients of an eval-mode model (frozen-BN fine-tuning, saliency): BN after the conv,
        # as eager computes it. Differentiating through the fold instead put the BN weight
        # and bias gradients 2.0-2.2x further from float64 than eager's (tiny HF MobileNetV1/V2,
        # fp32), past the parity rule's 2x: those gradients became sums over the folded
        # weight's gradient (itself a reduction) instead of one sum over the batch.
        y = ops.conv_bias_act(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation,
                              conv.groups, None)
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return y if activation is None else _EAGER_ACT[activation](y)
    # the key before the fold: the versions it records are those the fold below is made of
    fast_key = _eval_key(x, conv, bn, activation) if own_padding else None
    weight, bias = _folded(owner, conv, bn)
    return _planned_conv_bias_act(owner, x, weight, bias, conv, padding, activation, fast_key,
                                  bn)


class _EvalRunner:
    """The eval-inference call of a conv -> BN -> act chain with everything decided: ``run(x)``
    (``ops.conv_bias_act_runner`` on the cached fold) for as long as ``_eval_key`` of the
    call equals ``key`` and ``fold`` (the owner's ``_fold_cache`` entry it was made from) is
    still the owner's ``_fold_cache``. The second condition is what the tensor versions in
    the key cannot see: F.batch_norm updates the running statistics in place without bumping
    their versions, and each batch-statistics step drops the fold cache for that reason.
    ``call(x, conv, bn, activation)`` (``_guarded``) tests both conditions without building
    the key and runs ``run(x)``, or returns None.
    It lives in the owner's ``_conv_plan`` (which optimize's revert drops); pickling and
    deepcopy give an empty one (the closure holds a packed weight, which the copy re-derives
    on its first call)."""

    __slots__ = ("key", "run", "fold", "call")

    def __init__(self, key=None, run=None, fold=None) -> None:
        self.key, self.run, self.fold, self.call = key, run, fold, None

    def __reduce__(self):
        return _EvalRunner, ()


def _eval_key(x: Tensor, conv: nn.Conv2d, bn, activation):
    """Everything an _EvalRunner's validity depends on, or None where none may run: eval-mode
    BN, autograd off, plain eager (no compile, transform, subclass, mode or autocast); then
    x's signature, the fold's tensor versions, the conv's geometry, the activation, the
    backend, torch.backends.mkldnn's switch and the thread count (ATen's choice of kernel,
    which an NCHW runner follows, depends on it). ~3 us per call (vs ~50 us of checks on the
    path it skips; ops.conv_bias_act_runner has the numbers)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or bn.training \
            or type(x) is not Tensor or torch._C._len_torch_dispatch_stack() \
            or torch._C._is_torch_function_mode_enabled() \
            or torch._C._are_functorch_transforms_active() \
            or torch.is_autocast_enabled(x.device.type):
        return None
    c = conv.__dict__
    return (x.shape, x.stride(), x.dtype, x.device, _fold_key(conv, bn), c["stride"],
            c["padding"], c["dilation"], c["groups"], c["padding_mode"], activation,
            get_backend(), torch._C._get_mkldnn_enabled(), torch.get_num_threads())


_is_compiling = torch.compiler.is_compiling
_NO_TENSOR = torch.empty(0)  # stands for an absent bias/affine tensor in _guarded's checks


def _guarded(run, owner: nn.Module, x: Tensor, conv: nn.Conv2d, bn, activation, fold):
    """``call(t, conv, bn, activation)``: ``run(t)`` while ``_eval_key`` of the call would equal
    the one of (x, conv, bn, activation) now and ``fold`` is still the owner's ``_fold_cache``,
    else None. The same conditions as building and comparing that key, tested one by one on
    values held by the closure, without building a tuple per call.

    Why: in a whole model the key cost far more than in a loop over one layer, where it ran in
    ~3 us: each eval call comes after the previous layers' kernels have evicted the Python
    objects it touches. Zoo densenet121, batch 1, 224x224, 1 thread, the shared 2-core EPYC VM
    (thread CPU time, interleaved medians): _eval_key's parts summed to ~50 us per fused layer
    (torch.is_autocast_enabled(x.device.type) 12 us, the fold's tensor versions 11 us, ...);
    the optimized model ran 0.984x eager, and 1.013x with the runner called unchecked."""
    shape, stride, dtype, device = x.shape, x.stride(), x.dtype, x.device
    od, cd, bd = owner.__dict__, conv.__dict__, bn.__dict__
    cp, bp, bb = conv._parameters, bn._parameters, bn._buffers
    w, cb, bw, bbias = cp["weight"], cp.get("bias"), bp.get("weight"), bp.get("bias")
    rm, rv = bb.get("running_mean"), bb.get("running_var")
    ts = [_NO_TENSOR if t is None else t for t in (w, cb, bw, bbias, rm, rv)]
    t0, t1, t2, t3, t4, t5 = ts
    v0, v1, v2, v3, v4, v5 = (t._version for t in ts)
    # .to()/.double() keep a parameter's object and version and swap its data, so parameters
    # are checked by dtype too; it replaces buffers by new tensors, which identity catches
    d0, d1, d2, d3 = (t.dtype for t in ts[:4])
    # `p.data = t` keeps a tensor's object, version and dtype and swaps its storage
    p0, p1, p2, p3, p4, p5 = (t.data_ptr() for t in ts)
    wdevice, eps = w.device, bn.eps
    # held objects, compared by identity: an equal value assigned anew only costs a rebuild
    g0, g1, g2, g3, g4 = (cd["stride"], cd["padding"], cd["dilation"], cd["groups"],
                          cd["padding_mode"])
    backend, mkldnn = get_backend(), torch._C._get_mkldnn_enabled()
    threads = torch.get_num_threads()
    grad_enabled, dispatch_modes = torch.is_grad_enabled, torch._C._len_torch_dispatch_stack
    function_modes = torch._C._is_torch_function_mode_enabled
    transforms = torch._C._are_functorch_transforms_active
    # any device's autocast (no device string to parse): stricter than _eval_key, never wrong
    autocast = torch._C._is_any_autocast_enabled
    mkldnn_enabled, num_threads = torch._C._get_mkldnn_enabled, torch.get_num_threads
    selected_backend = _selected_backend.get  # get_backend() without its Python frame
    conv_ref, bn_ref = conv, bn

    def call(t, conv, bn, act):
        if grad_enabled() or bd["training"] or type(t) is not Tensor or dispatch_modes() \
                or function_modes() or transforms() or autocast() \
                or conv is not conv_ref or bn is not bn_ref or act != activation \
                or t.shape != shape or t.stride() != stride or t.dtype is not dtype \
                or t.device != device or od.get("_fold_cache") is not fold \
                or cp["weight"] is not w or cp.get("bias") is not cb or bp.get("weight") is not bw \
                or bp.get("bias") is not bbias or bb.get("running_mean") is not rm \
                or bb.get("running_var") is not rv \
                or t0._version != v0 or t1._version != v1 or t2._version != v2 \
                or t3._version != v3 or t4._version != v4 or t5._version != v5 \
                or t0.dtype is not d0 or t1.dtype is not d1 or t2.dtype is not d2 \
                or t3.dtype is not d3 \
                or t0.data_ptr() != p0 or t1.data_ptr() != p1 or t2.data_ptr() != p2 \
                or t3.data_ptr() != p3 or t4.data_ptr() != p4 or t5.data_ptr() != p5 \
                or t0.device != wdevice or bd["eps"] != eps or cd["stride"] is not g0 \
                or cd["padding"] is not g1 or cd["dilation"] is not g2 or cd["groups"] is not g3 \
                or cd["padding_mode"] is not g4 \
                or selected_backend() != backend or mkldnn_enabled() != mkldnn \
                or num_threads() != threads:
            return None
        return run(t)
    return call


def _planned_conv_bias_act(owner, x, weight, bias, conv, padding, activation, fast_key=None,
                           bn=None):
    """ops.conv_bias_act through a plan validated once per input signature (cached on owner;
    ops.conv_bias_act_plan says why), or the op itself. With ``fast_key`` (an ``_eval_key``
    of this call, ``bn`` the chain's BN) the plan also gets the call's _EvalRunner."""
    if torch.compiler.is_compiling():
        return ops.conv_bias_act(x, weight, bias, conv.stride, padding, conv.dilation,
                                 conv.groups, activation)
    key = (x.shape, x.stride(), x.dtype, x.device, weight.shape, conv.stride, padding,
           conv.dilation, conv.groups, activation)
    plan = owner.__dict__.get("_conv_plan")
    if plan is None or plan[0] != key or len(plan) < 3:  # (2-tuples: pickled before runners)
        planned = conv_bias_act_plan(x, weight, bias, conv.stride, padding, conv.dilation,
                                     conv.groups, activation)
        owner.__dict__["_conv_plan"] = plan = (key, planned, _EvalRunner())
    if plan[1] is not None and conv_bias_act_plan_ok(x, weight, bias):
        if fast_key is not None:
            fast, fold = plan[2], owner.__dict__.get("_fold_cache")
            if fast.key != fast_key or fast.fold is not fold:
                fast.key = fast.call = None  # while the runner is being made, no stale one runs
                fast.run = conv_bias_act_runner(plan[1], x, weight, bias)
                fast.key, fast.fold = fast_key, fold
                fast.call = _guarded(fast.run, owner, x, conv, bn, activation, fold)
            return fast.run(x)
        return run_conv_bias_act_plan(plan[1], x, weight, bias)
    return ops.conv_bias_act(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups,
                             activation)


def _chain_then_shuffle(owner, x, conv, bn, activation, padding, groups, shuffle) -> Tensor:
    """conv_bn_act_forward with ``shuffle_groups`` (its docstring)."""
    if _uses_batch_stats(bn) or (torch.is_grad_enabled() and any(
            p is not None and p.requires_grad for p in (x, conv.weight, conv.bias, bn.weight,
                                                        bn.bias))):
        return shuffle(conv_bn_act_forward(owner, x, conv, bn, activation, padding), groups)
    if padding is None:
        x, padding = padded_input(conv, x)
    if conv.groups == 1:
        # shuffling an ungrouped conv's output channels is the same conv with its weight's
        # output channels permuted (as ops.grouped_conv2d does it): the permuted fold is cached
        # and the conv runs as the unshuffled chain would, with no pass for the shuffle
        weight, bias = _folded(owner, conv, bn, groups)
        return ops.conv_bias_act(x, weight, bias, conv.stride, padding, conv.dilation, 1,
                                 activation)
    weight, bias = _folded(owner, conv, bn)
    return ops.grouped_conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups,
                              activation, groups)


def _folded(owner: nn.Module, conv: nn.Conv2d, bn, permute: int | None = None
            ) -> tuple[Tensor, Tensor]:
    """The eval-mode BN folded into the conv's weight and bias (their output channels in
    channel_shuffle's order for ``permute`` groups): inline under torch.compile (the compiled
    graph computes it), else cached on ``owner`` by tensor versions."""
    if torch.compiler.is_compiling():
        weight, bias = _fold_inline(conv, bn)
        return _permuted(weight, bias, permute)
    key = _fold_key(conv, bn) + (permute,)
    cache = owner.__dict__.get("_fold_cache")
    if cache is None or cache[0] != key:
        weight, bias = _permuted(*fold_batchnorm(conv.weight, conv.bias, bn), permute)
        owner.__dict__["_fold_cache"] = cache = (key, weight, bias)
    return cache[1], cache[2]


def _permuted(weight: Tensor, bias: Tensor, groups: int | None) -> tuple[Tensor, Tensor]:
    if groups is None:
        return weight, bias
    return permute_output_channels(weight, groups), permute_output_channels(bias, groups)


def _fold_inline(conv: nn.Conv2d, bn) -> tuple[Tensor, Tensor]:
    """fold_batchnorm's arithmetic (float64, cast back) with autograd recording."""
    dtype = conv.weight.dtype
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    return weight.to(dtype), shift.to(dtype)


class ConvBNAct(nn.Module):
    """Conv2d -> BatchNorm2d -> activation, exact in train and eval mode (module docstring).

    Args (as nn.Conv2d and nn.BatchNorm2d): in_channels, out_channels, kernel_size, stride,
        padding (None: ``(kernel_size - 1) // 2 * dilation``), dilation, groups, bias (the
        conv's; default False), activation (None, "relu", "relu6", "hardswish",
        "hardsigmoid", "silu"), eps, momentum, device, dtype.
    Shapes: (N, in_channels, H, W) -> (N, out_channels, OH, OW); float16/bfloat16/float32
        (float64 on CPU); NCHW or channels_last.
    Raises: ValueError for an unknown activation; in training, ValueError for one value per
        channel (as nn.BatchNorm2d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=None, dilation=1, groups: int = 1, bias: bool = False,
                 activation: str | None = "relu", eps: float = 1e-5, momentum: float | None = 0.1,
                 device=None, dtype=None) -> None:
        if padding is None:
            k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
            d = dilation if isinstance(dilation, int) else dilation[0]
            padding = (k - 1) // 2 * d
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        bn = nn.BatchNorm2d(out_channels, eps, momentum, device=device, dtype=dtype)
        if activation == "none":
            activation = None
        if activation not in _ACT_MODULES:
            raise ValueError(f"activation must be one of {sorted(a for a in _ACT_MODULES if a)} "
                             f"or None, got {activation!r}")
        super().__init__()
        self._init_from(conv, bn, _ACT_MODULES[activation](), ("conv", "bn", "act"))

    def _init_from(self, conv, bn, act, names) -> None:
        name = activation_name(act)
        if name is UNKNOWN:
            raise ValueError(f"act must be an activation fastblocks fuses (ReLU, ReLU6, Hardswish, "
                             f"Hardsigmoid, SiLU, Identity or None), got {type(act).__name__}")
        self._names = tuple(names)
        self.add_module(names[0], conv)
        self.add_module(names[1], bn)
        if act is not None and len(names) > 2:
            self.add_module(names[2], act)
        self.activation = name

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm,
                     act: nn.Module | None = None, *, names=("conv", "bn", "act")) -> "ConvBNAct":
        """Wrap existing modules (sharing their parameters and buffers): ``conv`` an nn.Conv2d,
        ``bn`` an nn.BatchNorm2d of conv.out_channels features, ``act`` an activation module
        (or None). ``names`` are the submodule names (("0", "1", "2") to keep a Sequential's
        state_dict keys). Raises TypeError/ValueError for modules that do not chain."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"bn has {bn.num_features} features but conv has "
                             f"{conv.out_channels} output channels")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new._init_from(conv, bn, act, names)
        return new

    def _submodule(self, index: int, what: str) -> nn.Module:
        try:
            return self._modules[self._names[index]]
        except (KeyError, AttributeError):
            # AttributeError, not KeyError: nn.Module.add_module asks hasattr(self, "conv")
            # before the submodule named "conv" exists
            raise AttributeError(f"{type(self).__name__} has no {what} yet") from None

    @property
    def conv(self) -> nn.Conv2d:
        return self._submodule(0, "conv")

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self._submodule(1, "bn")

    def to_modules(self) -> list[nn.Module]:
        """[conv, bn, act] (act omitted when there is none): the plain modules, shared."""
        return list(self._modules.values())

    def forward(self, x: Tensor) -> Tensor:
        return conv_bn_act_forward(self, x, self.conv, self.bn, self.activation)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fold_cache", None)  # derived; refolded on first use
        return state
