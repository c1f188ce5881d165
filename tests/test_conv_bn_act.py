"""conv -> BN -> activation: fastblocks.ops.conv_bias_act / conv_bn_act and nn.ConvBNAct against
the eager composition (F.conv2d, F.batch_norm, activation), forward and backward, train and
eval, with the one tolerance rule of fastblocks.testing."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastblocks import ops
from fastblocks.nn import ConvBNAct
from fastblocks.ops import _mkldnn_conv
from fastblocks.ops.conv_bn_act import reference_conv_bias_act, reference_conv_bn_act
from fastblocks.testing import check, compare
from tolerances import assert_parity

ACTS = (None, "relu", "relu6", "hardswish", "hardsigmoid", "silu")
CL = torch.channels_last


def _x(n, c, h, w, dtype=torch.float32, channels_last=False):
    x = torch.randn(n, c, h, w, dtype=dtype)
    return x.contiguous(memory_format=CL) if channels_last else x


def _bn_params(c, dtype=torch.float32):
    return (torch.rand(c, dtype=dtype) + 0.5, torch.randn(c, dtype=dtype) * 0.1,
            torch.randn(c) * 0.1, torch.rand(c) + 0.5)


# ---- conv_bias_act (inference chain) ---------------------------------------------------------

@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,stride,groups", [(1, 1, 1), (3, 2, 2)])
def test_conv_bias_act_parity(activation, channels_last, dtype, k, stride, groups):
    x = _x(2, 8, 9, 7, dtype, channels_last)
    w = torch.randn(12, 8 // groups, k, k, dtype=dtype) * 0.3
    b = torch.randn(12, dtype=dtype)
    args = (stride, k // 2, 1, groups, activation)
    fast = lambda x, w, b: ops.conv_bias_act(x, w, b, *args)  # noqa: E731
    eager = lambda x, w, b: reference_conv_bias_act(x, w, b, *args)  # noqa: E731
    for _ in range(2):  # the second call runs on the packed (cached) weight
        res = check(fast, eager, [x, w, b], grad_idx=(0, 1, 2), names=("x", "weight", "bias"))
        assert res.ok, res.messages
    y = ops.conv_bias_act(x, w, b, *args)
    assert y.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)


def test_conv_bias_act_float64_fallback_no_bias_unbatched_same_padding():
    x = torch.randn(4, 6, 6, dtype=torch.float64)
    w = torch.randn(5, 4, 2, 2, dtype=torch.float64)  # even kernel: asymmetric 'same'
    y = ops.conv_bias_act(x, w, None, 1, "same", 1, 1, "silu")
    torch.testing.assert_close(y, F.silu(F.conv2d(x, w, None, 1, "same")))
    y = ops.conv_bias_act(x, w, None, 1, "valid", 2, 1, "relu6")
    torch.testing.assert_close(y, F.relu6(F.conv2d(x, w, None, 1, "valid", 2)))


def test_conv_bias_act_depthwise_goes_to_depthwise_op():
    x = _x(2, 6, 8, 8, channels_last=True)
    w = torch.randn(6, 1, 3, 3)
    b = torch.randn(6)
    y = ops.conv_bias_act(x, w, b, 1, 1, 1, 6, "relu6")
    torch.testing.assert_close(y, F.relu6(F.conv2d(x, w, b, 1, 1, 1, 6)))


def test_packed_weight_sees_in_place_updates():
    _mkldnn_conv.clear_cache()
    x = _x(1, 4, 6, 6, channels_last=True)
    w = torch.randn(8, 4, 3, 3)
    for step in range(3):  # plain, packed, then an in-place change invalidates the pack
        if step == 2:
            with torch.no_grad():
                w.mul_(-2.0)
        torch.testing.assert_close(ops.conv_bias_act(x, w, None, 1, 1, 1, 1, "relu"),
                                   F.relu(F.conv2d(x, w, None, 1, 1)))


def test_conv_bias_act_empty_batch():
    x = torch.randn(0, 4, 5, 5).contiguous(memory_format=CL)
    y = ops.conv_bias_act(x, torch.randn(3, 4, 3, 3), None, 1, 1, 1, 1, "relu")
    assert y.shape == (0, 3, 5, 5)


def test_conv_bias_act_autocast_bf16():
    x, w, b = torch.randn(1, 4, 6, 6), torch.randn(8, 4, 3, 3), torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv_bias_act(x, w, b, 1, 1, 1, 1, "relu")
        ref = F.relu(F.conv2d(x, w, b, 1, 1))
    assert y.dtype == ref.dtype == torch.bfloat16


def test_autocast_mixed_dtypes_cast_like_conv():
    """Under autocast a bfloat16 activation meets float32 parameters, as F.conv2d allows."""
    x, w, b = torch.randn(1, 4, 6, 6).bfloat16(), torch.randn(8, 4, 3, 3), torch.randn(8)
    bw, bb, rm, rv = _bn_params(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv_bias_act(x, w, b, 1, 1, 1, 1, "silu")
        y2 = ops.conv_bn_act(x, w, b, bw, bb, rm, rv, training=True, padding=1)
        ref = F.silu(F.conv2d(x, w, b, 1, 1))
    assert y.dtype == y2.dtype == ref.dtype == torch.bfloat16


def test_conv_bias_act_gradcheck_fp64():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for act, stride in (("relu6", 2), ("silu", 1)):
        assert torch.autograd.gradcheck(
            lambda x, w, b: ops.conv_bias_act(x, w, b, stride, 1, 1, 2, act), (x, w, b))


def test_conv_bias_act_opcheck():
    op = torch.ops.fastblocks.conv_bias_act
    x = _x(2, 4, 5, 5, channels_last=True).requires_grad_()
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    torch.library.opcheck(op, (x, w, torch.randn(6, requires_grad=True), [1, 1], [1, 1],
                               [1, 1], 2, 3))


def test_conv_bias_act_compile_fullgraph():
    x, w, b = _x(2, 4, 6, 6, channels_last=True), torch.randn(6, 4, 3, 3), torch.randn(6)
    fn = torch.compile(lambda x, w, b: ops.conv_bias_act(x, w, b, 1, 1, 1, 1, "hardswish"),
                       fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x, w, b), F.hardswish(F.conv2d(x, w, b, 1, 1)))


# ---- conv_bn_act (training and eval) ---------------------------------------------------------

def _train_pair(x, w, cb, bw, bb, rm, rv, **kw):
    """(fastblocks, eager) callables over (x, w, cb, bw, bb) with their own running stats."""
    def fast(x, w, cb, bw, bb):  # running stats in x's dtype: the float64 reference needs it
        return ops.conv_bn_act(x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype), training=True,
                               **kw)

    def eager(x, w, cb, bw, bb):
        return reference_conv_bn_act(x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype),
                                     training=True, **kw)
    return fast, eager


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_bn_act_train_parity_fp32(activation, channels_last):
    x = _x(3, 4, 7, 6, channels_last=channels_last)
    w, cb = torch.randn(6, 2, 3, 3) * 0.3, torch.randn(6)
    bw, bb, rm, rv = _bn_params(6)
    kw = dict(stride=1, padding=1, groups=2, activation=activation)
    fast, eager = _train_pair(x, w, cb, bw, bb, rm, rv, **kw)
    res = check(fast, eager, [x, w, cb, bw, bb], grad_idx=(0, 1, 2, 3, 4),
                names=("x", "weight", "bias", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_conv_bn_act_train_parity_bf16(activation):
    x = _x(2, 4, 6, 6, torch.bfloat16, channels_last=True)
    w, cb = torch.randn(8, 4, 1, 1, dtype=torch.bfloat16), torch.randn(8, dtype=torch.bfloat16)
    bw, bb, rm, rv = _bn_params(8, torch.bfloat16)
    fast, eager = _train_pair(x, w, cb, bw, bb, rm, rv, activation=activation)
    res = check(fast, eager, [x, w, cb, bw, bb], grad_idx=(0, 1, 3, 4),
                names=("x", "weight", "bias", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_conv_bn_act_running_stats_after_steps(momentum):
    w, cb = torch.randn(5, 3, 3, 3), torch.randn(5)
    bw, bb, rm, rv = _bn_params(5)
    rm2, rv2 = rm.clone(), rv.clone()
    for step in range(4):
        x = _x(2, 3, 6, 6, channels_last=step % 2 == 1) * (step + 1) + step
        kw = dict(training=True, momentum=momentum, eps=1e-3, padding=1, activation="relu")
        y = ops.conv_bn_act(x, w, cb, bw, bb, rm, rv, **kw)
        ref = reference_conv_bn_act(x, w, cb, bw, bb, rm2, rv2, **kw)
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(rm, rm2)
        torch.testing.assert_close(rv, rv2)


def test_conv_bn_act_cumulative_average_with_num_batches_tracked():
    """momentum=None with num_batches_tracked: nn.BatchNorm2d's cumulative average, step by
    step, and the counter incremented as its forward does (eval calls leave it)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, momentum=None, eps=1e-3)
    w, cb = torch.randn(5, 3, 3, 3), torch.randn(5)
    rm, rv, nbt = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    for step in range(3):
        x = _x(2, 3, 6, 6) * (step + 1) + step
        y = ops.conv_bn_act(x, w, cb, bn.weight, bn.bias, rm, rv, training=True, momentum=None,
                            eps=1e-3, padding=1, activation="relu", num_batches_tracked=nbt)
        ref = F.relu(bn.train()(F.conv2d(x, w, cb, padding=1)))
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(rm, bn.running_mean)
        torch.testing.assert_close(rv, bn.running_var)
        assert int(nbt) == int(bn.num_batches_tracked) == step + 1
    ops.conv_bn_act(x, w, cb, bn.weight, bn.bias, rm, rv, training=False, momentum=None,
                    num_batches_tracked=nbt)
    assert int(nbt) == 3
    with pytest.raises(ValueError, match="momentum=None .* needs num_batches_tracked"):
        ops.conv_bn_act(x, w, cb, None, None, rm, rv, training=True, momentum=None)
    with pytest.raises(ValueError, match="num_batches_tracked must be a one-element integer"):
        ops.conv_bn_act(x, w, cb, None, None, rm, rv, training=True, momentum=None,
                        num_batches_tracked=torch.zeros(1))


def test_conv_bn_act_train_without_running_stats_or_affine():
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    y = ops.conv_bn_act(x, w, None, None, None, None, None, training=True, activation="relu6")
    torch.testing.assert_close(y, F.relu6(F.batch_norm(F.conv2d(x, w), None, None, training=True)))


@pytest.mark.parametrize("activation", ["relu6", "hardswish"])
def test_conv_bn_act_eval_parity(activation):
    x = _x(2, 4, 6, 6, channels_last=True)
    w, cb = torch.randn(6, 4, 3, 3), torch.randn(6)
    bw, bb, rm, rv = _bn_params(6)
    kw = dict(training=False, padding=1, activation=activation)
    fast = lambda x, w, cb, bw, bb: ops.conv_bn_act(  # noqa: E731
        x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw)
    eager = lambda x, w, cb, bw, bb: reference_conv_bn_act(  # noqa: E731
        x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw)
    res = check(fast, eager, [x, w, cb, bw, bb], grad_idx=(0, 1, 3),
                names=("x", "weight", "bias", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


def test_conv_bn_act_train_gradcheck_fp64():
    d = torch.float64
    ins = [torch.randn(2, 2, 3, 3, dtype=d), torch.randn(3, 2, 2, 2, dtype=d),
           torch.randn(3, dtype=d), torch.rand(3, dtype=d) + 0.5, torch.randn(3, dtype=d)]
    ins = [t.requires_grad_() for t in ins]
    assert torch.autograd.gradcheck(  # hardswish: the pre-activation is recomputed in backward
        lambda *a: ops.conv_bn_act(*a, None, None, training=True, padding=1, activation="hardswish"),
        ins)


def test_conv_bn_act_train_opcheck():
    args = (torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(6, 4, 3, 3, requires_grad=True),
            None, torch.rand(6, requires_grad=True), torch.randn(6, requires_grad=True),
            1e-5, [1, 1], [1, 1], [1, 1], 1, 5)
    torch.library.opcheck(torch.ops.fastblocks.conv_bn_act_train, args)


def test_conv_bn_act_train_compile_fullgraph_updates_running_stats():
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    bw, bb, rm, rv = _bn_params(4)
    rm2, rv2 = rm.clone(), rv.clone()
    fn = torch.compile(lambda x, rm, rv: ops.conv_bn_act(
        x, w, None, bw, bb, rm, rv, training=True, padding=1, activation="silu"),
        fullgraph=True, backend="aot_eager")
    y = fn(x, rm, rv)
    ref = reference_conv_bn_act(x, w, None, bw, bb, rm2, rv2, training=True, padding=1,
                                activation="silu")
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


def test_conv_bn_act_backward_keeps_only_x_and_conv_output():
    """The memory saving: the autograd graph holds x, the conv output z and (C,) vectors; eager
    holds BN's output (or the activation's) too. On CPU tensors only when a backend is chosen:
    `auto` runs eager's composition there (ops/conv_bn_act.py says why)."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(8, 4, 1, 1, requires_grad=True)
    bw, bb = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)

    def saved_maps(fn):
        maps = []

        def pack(t):
            if t.dim() == 4 and t.shape[1] == 8:
                maps.append(t)
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, w, None, bw, bb, None, None, training=True, activation="hardswish")
        return len(maps)
    import fastblocks
    for backend in ("cpu", "torch"):  # our kernels, and the ATen composition of the same design
        with fastblocks.backend(backend):
            assert saved_maps(ops.conv_bn_act) == 1, backend
    assert saved_maps(reference_conv_bn_act) == 2
    # CPU training under `auto` is eager's composition (the recompute measured slower there)
    assert saved_maps(ops.conv_bn_act) == 2


def test_one_value_per_channel_in_training_raises_like_batchnorm():
    x, w = torch.randn(1, 3, 1, 1), torch.randn(4, 3, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        ops.conv_bn_act(x, w, None, None, None, None, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(F.conv2d(x, w), None, None, training=True)


@pytest.mark.parametrize("call,match,exc", [
    (lambda x, w: ops.conv_bias_act(x, w[:, :3], None), "weight must have shape", ValueError),
    (lambda x, w: ops.conv_bias_act(x, w, torch.randn(5)), "bias must have shape", ValueError),
    (lambda x, w: ops.conv_bias_act(x, w.double()), "weight has dtype", TypeError),
    (lambda x, w: ops.conv_bias_act(x.long(), w), "x must have a floating dtype", TypeError),
    (lambda x, w: ops.conv_bias_act(x, w, activation="gelu"), "activation must be one of", ValueError),
    (lambda x, w: ops.conv_bias_act(x, w, groups=0), "groups must be", ValueError),
    (lambda x, w: ops.conv_bias_act(x, w, stride=0), "stride must be positive", ValueError),
    (lambda x, w: ops.conv_bias_act(x[0, 0], w), "x must be 4-d", ValueError),
    (lambda x, w: ops.conv_bn_act(x, w, None, torch.ones(3), None, None, None, training=True),
     "bn_weight must have shape", ValueError),
    (lambda x, w: ops.conv_bn_act(x, w, None, None, None, torch.zeros(4), None, training=False),
     "running_mean and running_var are needed", ValueError),
    (lambda x, w: ops.conv_bn_act(x, w, None, None, None, torch.zeros(2), torch.ones(4),
                                  training=True), "running_mean must have shape", ValueError),
    (lambda x, w: ops.conv_bn_act(x, w, None, None, None, None, None, training=1),
     "training must be a bool", TypeError),
    (lambda x, w: ops.conv_bn_act(x, w, None, None, None, None, None, training=True,
                                  momentum="0.1"), "momentum must be a float", TypeError),
    (lambda x, w: ops.conv_bn_act(x, w, None, None, None, None, None, training=True,
                                  num_batches_tracked=3), "num_batches_tracked must be a torch",
     TypeError),
])
def test_bad_inputs_name_the_argument(call, match, exc):
    with pytest.raises(exc, match=match):
        call(torch.randn(2, 4, 5, 5), torch.randn(4, 4, 3, 3))


# ---- nn.ConvBNAct ----------------------------------------------------------------------------

def _sequential(act=nn.ReLU6):
    seq = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.BatchNorm2d(6), act())
    with torch.no_grad():
        seq[1].running_mean.normal_()
        seq[1].running_var.uniform_(0.5, 2)
        seq[1].weight.uniform_(0.5, 1.5)
    return seq


@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_train_steps_then_eval_match_sequential(momentum):
    seq = _sequential(nn.SiLU)
    seq[1].momentum = momentum
    ref = copy.deepcopy(seq)
    fused = ConvBNAct.from_modules(seq[0], seq[1], seq[2], names=("0", "1", "2"))
    opt, opt_ref = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (fused, ref))
    for step in range(3):
        x = _x(2, 4, 6, 6, channels_last=step == 1) + step
        for m, o in ((fused, opt), (ref, opt_ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
        for (k, a), b in zip(fused.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)
    fused.eval(), ref.eval()
    x = _x(2, 4, 6, 6, channels_last=True)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(fused(x), ref(x))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), ref(x))



def test_module_eval_train_eval_sees_new_running_statistics():
    """Validation under no_grad (the eval runner is made on the second call), a training step
    (F.batch_norm updates the running statistics without bumping their versions), validation
    again: the runner made from the first fold must not serve it."""
    seq = _sequential(nn.ReLU)
    ref = copy.deepcopy(seq)
    fused = ConvBNAct.from_modules(seq[0], seq[1], seq[2], names=("0", "1", "2"))
    x = _x(2, 4, 6, 6, channels_last=True)
    for step in range(2):
        for m in (fused, ref):
            m.eval()
        with torch.no_grad():
            for _ in range(2):
                torch.testing.assert_close(fused(x), ref(x), msg=f"step {step}")
        for m in (fused, ref):
            m.train()
            m(x + 1).sum().backward()

def test_module_state_dict_round_trip_with_sequential():
    seq = _sequential()
    fused = ConvBNAct(4, 6, 3, groups=2, bias=True, activation="relu6")
    assert list(fused.state_dict()) == ["conv.weight", "conv.bias", "bn.weight", "bn.bias",
                                        "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    renamed = {k.replace("0.", "conv.").replace("1.", "bn."): v for k, v in seq.state_dict().items()}
    fused.load_state_dict(renamed)
    fused.eval(), seq.eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), seq(x))
    back = _sequential()
    back.load_state_dict({k.replace("conv.", "0.").replace("bn.", "1."): v
                          for k, v in fused.state_dict().items()})
    back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), seq(x))


# ---- the training kernels: fastblocks._C against the ATen composition (torch backend) ---------

@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("activation,channels_last", [("hardswish", False), ("relu", True)])
def test_conv_bn_act_train_backends(backend, activation, channels_last):
    import fastblocks
    if backend not in fastblocks.available_backends("cpu"):
        pytest.skip(f"{backend} backend unavailable")
    x = _x(2, 3, 5, 4, channels_last=channels_last)
    w, cb = torch.randn(5, 3, 3, 3) * 0.3, torch.randn(5)
    bw, bb, rm, rv = _bn_params(5)
    fast, eager = _train_pair(x, w, cb, bw, bb, rm, rv, padding=1, activation=activation)
    with fastblocks.backend(backend):
        res = check(fast, eager, [x, w, cb, bw, bb], grad_idx=(0, 1, 2, 3, 4),
                    names=("x", "weight", "bias", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


@pytest.mark.parametrize("backend", ["auto", "cpu", "triton"])
def test_conv_bn_act_train_statistics_accurate_for_large_means(backend):
    """One-pass statistics with a mean 1e4 times the spread: no cancellation (the error
    against float64 is at most twice eager's)."""
    import fastblocks
    if backend not in fastblocks.available_backends("cpu"):
        pytest.skip(f"{backend} backend unavailable")
    x = torch.randn(4, 3, 6, 6)
    w, cb = torch.randn(4, 3, 1, 1) * 0.1, torch.full((4,), 1e4)
    bw, bb, rm, rv = _bn_params(4)
    rm_f, rv_f, rm_e, rv_e = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    kw = dict(training=True, activation="silu")
    with fastblocks.backend(backend):
        y = ops.conv_bn_act(x, w, cb, bw, bb, rm_f, rv_f, **kw)
    ye = reference_conv_bn_act(x, w, cb, bw, bb, rm_e, rv_e, **kw)
    d = [t.double() for t in (x, w, cb, bw, bb, rm, rv)]
    yh = reference_conv_bn_act(*d, **kw)
    assert_parity(y, ye, yh, reduction=True)
    assert_parity(rv_f, rv_e, d[6], "running_var", reduction=True)


@pytest.mark.parametrize("activation,channels_last,dtype", [
    ("silu", False, torch.float32), ("relu6", True, torch.float32), ("hardswish", True, torch.float64)])
def test_conv_bn_act_train_triton_interpreter(activation, channels_last, dtype):
    """The Triton kernels (kernels/conv_bn_act.py) under TRITON_INTERPRET=1 on tiny shapes."""
    import fastblocks
    if "triton" not in fastblocks.available_backends("cpu"):
        pytest.skip("triton backend unavailable (TRITON_INTERPRET=1 and triton needed)")
    x = _x(2, 3, 4, 3, dtype, channels_last)
    w, cb = torch.randn(4, 3, 1, 1, dtype=dtype), torch.randn(4, dtype=dtype)
    bw, bb, rm, rv = _bn_params(4, dtype)
    fast, eager = _train_pair(x, w, cb, bw, bb, rm, rv, activation=activation)
    with fastblocks.backend("triton"):
        res = check(fast, eager, [x, w, cb, bw, bb], grad_idx=(0, 1, 3, 4),
                    names=("x", "weight", "bias", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_conv_bn_act_cuda(dtype, training):
    """On a GPU: the train path (Triton kernels under auto) and the eval path (ATen/cuDNN
    conv + fused activation), multi-tile sizes, channels_last."""
    dev = "cuda"
    x = torch.randn(8, 32, 28, 28, device=dev, dtype=dtype).contiguous(memory_format=CL)
    w, cb = torch.randn(64, 32, 3, 3, device=dev, dtype=dtype) * 0.1, None
    bw = torch.rand(64, device=dev, dtype=dtype) + 0.5
    bb = torch.randn(64, device=dev, dtype=dtype) * 0.1
    rm, rv = torch.zeros(64, device=dev), torch.ones(64, device=dev)
    kw = dict(training=training, padding=1, activation="silu")

    def fast(x, w, bw, bb):
        return ops.conv_bn_act(x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw)

    def eager(x, w, bw, bb):
        return reference_conv_bn_act(x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw)
    res = check(fast, eager, [x, w, bw, bb], grad_idx=(0, 1, 2, 3),
                names=("x", "weight", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


@pytest.mark.parametrize("n, c_in, hw, k, onednn", [
    (1, 16, 8, 1, False),    # 1x1, 0.07 M multiply-adds: ATen's GEMM (less per-call cost)
    (2, 64, 36, 1, True),    # 1x1, 10.6 M: oneDNN's fused primitive
    (1, 4, 6, 3, True),      # 3x3: oneDNN at every size
])
def test_cpu_channels_last_path_by_size(monkeypatch, n, c_in, hw, k, onednn):
    calls = []
    real = _mkldnn_conv.conv_pointwise
    monkeypatch.setattr(_mkldnn_conv, "conv_pointwise",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = _x(n, c_in, hw, hw, channels_last=True)
    w, b = torch.randn(64, c_in, k, k), torch.randn(64)
    y = ops.conv_bias_act(x, w, b, 1, k // 2, 1, 1, "relu6")
    assert bool(calls) == (onednn and _mkldnn_conv.can_serve(x, w))
    assert y.is_contiguous(memory_format=CL)
    ok, _, msg = compare(y, F.relu6(F.conv2d(x, w, b, 1, k // 2)),
                         F.relu6(F.conv2d(x.double(), w.double(), b.double(), 1, k // 2)),
                         reduction=True)
    assert ok, msg


@pytest.mark.parametrize("hw, k, threads, packed",
                         [(3, 3, 1, False), (24, 3, 1, False), (1, 1, 1, False), (1, 1, 2, True)])
def test_cpu_nchw_large_weight_goes_through_packed_onednn(monkeypatch, hw, k, threads, packed):
    """NCHW 1x1 with a weight of at least twice the elements of x and y: ATen's NCHW oneDNN
    convolution on a weight packed once (ops/conv_bn_act.py has the numbers); else ATen (kxk:
    as fast). Not where ATen itself would not use oneDNN (a 1x1 at one thread: its GEMM
    convolution accumulates more exactly). Through the op and through ConvBNAct's runner."""
    calls = []
    real = _mkldnn_conv.conv_nchw
    monkeypatch.setattr(_mkldnn_conv, "conv_nchw",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    runner = _mkldnn_conv.runner_nchw  # ConvBNAct's eval runner packs through this
    monkeypatch.setattr(_mkldnn_conv, "runner_nchw",
                        lambda *a, **kw: calls.append(1) or runner(*a, **kw))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # ATen's choice for the 1x1 depends on it
    try:
        _nchw_large_weight_case(calls, hw, k, packed)
    finally:
        torch.set_num_threads(before)


def _nchw_large_weight_case(calls, hw, k, packed):
    x, w, b = _x(2, 32, hw, hw), torch.randn(32, 32, k, k) * 0.1, torch.randn(32)
    y = ops.conv_bias_act(x, w, b, 1, k // 2, 1, 1, "relu")
    assert bool(calls) == (packed and _mkldnn_conv.can_serve(x, w))
    assert y.is_contiguous()
    hi = F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, k // 2))
    ok, _, msg = compare(y, F.relu(F.conv2d(x, w, b, 1, k // 2)), hi, reduction=True)
    assert ok, msg
    calls.clear()
    m = ConvBNAct(32, 32, k).eval()
    with torch.no_grad():
        m.conv.weight.copy_(w)
        ys = [m(x) for _ in range(3)]  # the third call runs the runner
    assert bool(calls) == (packed and _mkldnn_conv.can_serve(x, w))
    ref = nn.Sequential(m.conv, m.bn, nn.ReLU()).eval()
    with torch.no_grad():
        eager, hi = ref(x), copy.deepcopy(ref).double()(x.double())
    for y in ys:
        assert y.is_contiguous()
        ok, _, msg = compare(y, eager, hi, reduction=True)
        assert ok, msg


def test_cpu_nchw_large_weight_is_as_exact_as_eager_at_two_threads():
    """The NCHW large-weight 1x1 route runs ATen's own NCHW oneDNN primitive (packed weight),
    not the channels_last one through a layout copy: at 2 threads that one missed the rule on
    this layer (max error vs float64 1.7e-05, eager's 7.6e-06; the shared 2-core EPYC VM)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(2, 2048, 1, 1, generator=gen) * 10
        w = torch.randn(448, 2048, 1, 1, generator=gen) / 2048 ** 0.5
        b = torch.randn(448, generator=gen)
        for _ in range(2):  # the second call runs on the packed weight
            y = ops.conv_bias_act(x, w, b, 1, 0, 1, 1, "relu")
        hi = F.relu(F.conv2d(x.double(), w.double(), b.double()))
        ok, _, msg = compare(y, F.relu(F.conv2d(x, w, b)), hi, reduction=True)
        assert ok, msg
        assert y.is_contiguous()
    finally:
        torch.set_num_threads(threads)


def test_compile_on_cpu_hands_the_conv_to_inductor():
    """Under torch.compile on CPU, conv_bias_act traces to ATen's conv and activation (inductor
    fuses them itself), not to the opaque fastblocks op."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    f = torch.compile(lambda x, w, b: ops.conv_bias_act(x, w, b, 1, 1, 1, 1, "relu6"),
                      backend=backend, fullgraph=True)
    x, w, b = _x(1, 4, 6, 6, channels_last=True), torch.randn(8, 4, 3, 3), torch.randn(8)
    y = f(x, w, b)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any("conv2d" in t for t in targets), targets
    assert not any("fastblocks" in t for t in targets), targets
    ok, _, msg = compare(y, F.relu6(F.conv2d(x, w, b, 1, 1)),
                         F.relu6(F.conv2d(x.double(), w.double(), b.double(), 1, 1)), reduction=True)
    assert ok, msg


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_conv_bn_act_cuda_kernels(backend, dtype, channels_last, training):
    """On a GPU: the cuda backend's kernels (csrc/cuda/conv_bn_act.cu): training BN + act
    forward/backward and the eval epilogue (cuDNN conv + bias_act_), with running statistics,
    odd sizes and several blocks per channel."""
    import fastblocks
    dev = "cuda"
    x = torch.randn(3, 24, 29, 31, device=dev, dtype=dtype)
    x = x.contiguous(memory_format=CL) if channels_last else x
    w, cb = torch.randn(40, 24, 3, 3, device=dev, dtype=dtype) * 0.1, torch.randn(40, device=dev, dtype=dtype)
    bw = torch.rand(40, device=dev, dtype=dtype) + 0.5
    bb = torch.randn(40, device=dev, dtype=dtype) * 0.1
    # float32 running statistics holding values of `dtype`: eval folds the same numbers
    rm = torch.randn(40, device=dev).to(dtype).float()
    rv = (torch.rand(40, device=dev) + 0.5).to(dtype).float()
    rm_f, rv_f, rm_e, rv_e = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    kw = dict(training=training, padding=1, activation="hardswish")

    def fast(x, w, cb, bw, bb):
        return ops.conv_bn_act(x, w, cb, bw, bb, rm_f, rv_f, **kw)

    def eager(x, w, cb, bw, bb):
        return reference_conv_bn_act(x, w, cb, bw, bb, rm_e.to(x.dtype), rv_e.to(x.dtype), **kw)
    with fastblocks.backend(backend):
        res = check(fast, eager, [x, w, cb, bw, bb], grad_idx=(0, 1, 2, 3, 4),
                    names=("x", "weight", "bias", "bn_weight", "bn_bias"))
    assert res.ok, res.messages


def test_eval_plan_is_used_and_keeps_autograd():
    """Eval inference runs through a plan validated once (fastblocks/nn/conv_bn_act.py); with
    an input that needs its gradient the op is called as before."""
    torch.manual_seed(0)
    m = ConvBNAct(4, 8, 3, activation="relu6").eval()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 2.0)
    ref = nn.Sequential(m.conv, m.bn, nn.ReLU6())
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        y1, y2 = m(x), m(x)
        eager = ref(x)
        hi = copy.deepcopy(ref).double()(x.double())
    assert m.__dict__["_conv_plan"][1] is not None
    for y in (y1, y2):
        ok, _, msg = compare(y, eager, hi, reduction=True)
        assert ok, msg
    xg = x.clone().requires_grad_()
    m(xg).sum().backward()
    xr = x.clone().requires_grad_()
    ref(xr).sum().backward()
    ok, _, msg = compare(xg.grad, xr.grad, None, reduction=False)
    assert xg.grad is not None and ok, msg


# ---- conv_bias_add_act (ResNet block tail: conv -> BN folded -> + identity -> act) ----------

from fastblocks.ops.conv_bias_add_act import reference_conv_bias_add_act  # noqa: E402


@pytest.mark.parametrize("activation,channels_last", [("relu", True), ("silu", True),
                                                     ("relu", False), (None, True)])
def test_conv_bias_add_act_parity_and_onednn_binary_post_op(monkeypatch, activation,
                                                            channels_last):
    calls = []
    real = _mkldnn_conv.conv_add_pointwise
    monkeypatch.setattr(_mkldnn_conv, "conv_add_pointwise",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = _x(2, 4, 7, 6, channels_last=channels_last)
    w, b = torch.randn(6, 4, 3, 3) * 0.3, torch.randn(6)
    other = _x(2, 6, 7, 6, channels_last=channels_last)
    kw = dict(stride=1, padding=1, activation=activation)
    res = check(lambda x, w, b, o: ops.conv_bias_add_act(x, w, b, o, **kw),
                lambda x, w, b, o: reference_conv_bias_add_act(x, w, b, o, **kw),
                [x, w, b, other], grad_idx=(0, 1, 2, 3), names=("x", "weight", "bias", "other"))
    assert res.ok, res.messages
    with torch.no_grad():
        for _ in range(2):  # packed weight from the second use on
            y = ops.conv_bias_add_act(x, w, b, other, **kw)
    assert y.is_contiguous(memory_format=CL) == channels_last
    assert bool(calls) == (channels_last and _mkldnn_conv.can_serve(x, w))


def test_conv_bias_add_act_gradcheck_opcheck_compile():
    d = torch.float64
    ins = [torch.randn(2, 2, 3, 3, dtype=d), torch.randn(3, 2, 2, 2, dtype=d),
           torch.randn(3, dtype=d), torch.randn(2, 3, 4, 4, dtype=d)]
    ins = [t.requires_grad_() for t in ins]
    assert torch.autograd.gradcheck(  # hardswish: the pre-activation is recomputed
        lambda *a: ops.conv_bias_add_act(*a, padding=1, activation="hardswish"), ins)
    x = _x(1, 4, 5, 5, channels_last=True).requires_grad_()
    w, b = torch.randn(4, 4, 1, 1, requires_grad=True), torch.randn(4, requires_grad=True)
    o = _x(1, 4, 5, 5, channels_last=True).requires_grad_()
    torch.library.opcheck(torch.ops.fastblocks.conv_bias_add_act,
                          (x, w, b, o, [1, 1], [0, 0], [1, 1], 1, 1))
    f = torch.compile(lambda x, w, b, o: ops.conv_bias_add_act(x, w, b, o), fullgraph=True,
                      backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(f(x, w, b, o), reference_conv_bias_add_act(x, w, b, o))


@pytest.mark.parametrize("call,match,exc", [
    (lambda x, w, o: ops.conv_bias_add_act(x, w, None, o[:, :2]), "other must have the conv "
     "output's shape", ValueError),
    (lambda x, w, o: ops.conv_bias_add_act(x, w, None, o.double()), "other has dtype", TypeError),
    (lambda x, w, o: ops.conv_bias_add_act(x, w, None, 1.0), "other must be a torch.Tensor",
     TypeError),
    (lambda x, w, o: ops.conv_bias_add_act(x[0], w, None, o), "x must be 4-d", ValueError),
])
def test_conv_bias_add_act_bad_inputs_name_the_argument(call, match, exc):
    with pytest.raises(exc, match=match):
        call(torch.randn(2, 4, 5, 5), torch.randn(4, 4, 3, 3), torch.randn(2, 4, 3, 3))


# ---- the eval fast path's guard (nn/conv_bn_act.py _guarded) ------------------------------------

def _guard_mutations():
    """(name, fn(seq)) pairs: each changes what the eval runner was made from."""
    def replace_weight(s):
        s[0].weight = nn.Parameter(s[0].weight.detach() * 0.5)

    def stride(s):
        s[0].stride = (2, 2)

    def eps(s):
        s[1].eps = 0.5
    return [("weight in place", lambda s: s[0].weight.detach().mul_(0.5)),
            ("running_mean in place", lambda s: s[1].running_mean.add_(1.0)),
            ("weight replaced", replace_weight), ("stride", stride), ("eps", eps),
            # `p.data = t` (weight loading in user code) keeps the object, version and dtype
            ("weight .data assigned", lambda s: setattr(s[0].weight, "data", s[0].weight * 0.5)),
            ("running_var .data assigned",
             lambda s: setattr(s[1].running_var, "data", s[1].running_var * 4.0))]


@pytest.mark.parametrize("name,mutate", _guard_mutations(), ids=[n for n, _ in _guard_mutations()])
def test_eval_guard_sees_every_change_to_the_fold(name, mutate):
    """After the eval runner is made, each change to the conv, the BN or their tensors makes
    the next call recompute (equal to the eager chain), and a repeated call with nothing
    changed takes the guarded runner without building _eval_key."""
    import fastblocks.nn.conv_bn_act as impl
    torch.manual_seed(0)
    seq = _sequential(nn.ReLU).eval()
    seq[1].running_mean.uniform_(-0.5, 0.5)
    fused = ConvBNAct.from_modules(seq[0], seq[1], seq[2], names=("0", "1", "2"))
    x = _x(1, 4, 6, 6)
    with torch.no_grad():
        fused(x), fused(x)  # the second call makes the runner
        keys = []
        real = impl._eval_key
        impl._eval_key = lambda *a: keys.append(1) or real(*a)
        try:
            torch.testing.assert_close(fused(x), seq(x))
            assert not keys, "an unchanged call should not build _eval_key"
            mutate(seq)
            torch.testing.assert_close(fused(x), seq(x), msg=name)
            torch.testing.assert_close(fused(x), seq(x), msg=name)  # the remade runner
        finally:
            impl._eval_key = real


def test_optimized_model_sees_parameter_data_assigned():
    """`conv.weight.data = t` after the optimized model has run (and cached its fold) changes
    its next output as it changes eager's."""
    import fastblocks
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    opt = fastblocks.optimize(copy.deepcopy(plain)).eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        for _ in range(3):  # past the first calls: the fold and the eval runner exist
            opt(x)
        new = torch.randn_like(plain[0].weight)
        plain[0].weight.data = new.clone()
        opt[0].weight.data = new.clone()
        torch.testing.assert_close(opt(x), plain(x))


def test_packed_weight_sees_weight_data_assigned():
    """ops.conv_bias_act on a parameter: its cached oneDNN-packed copy is dropped when
    `weight.data = t` swaps the storage (same object, same version)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):  # the second use packs, the third uses the packed copy
            ops.conv_bias_act(x, conv.weight, conv.bias, (1, 1), (1, 1), (1, 1), 1, "relu")
        conv.weight.data = torch.randn_like(conv.weight)
        got = ops.conv_bias_act(x, conv.weight, conv.bias, (1, 1), (1, 1), (1, 1), 1, "relu")
        torch.testing.assert_close(got, F.relu(conv(x)))
