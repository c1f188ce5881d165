"""The zoo's ShuffleNet v1/v2, Xception and SE-ResNet(Xt) families (issue 14, second half):
every registered name builds, runs forward and backward at a small resolution, matches its
published parameter count and (ShuffleNetV2) torchvision's state_dict layout, and its fused
form (``create_model(fused=True)`` = ``fastblocks.optimize``) equals the plain model with the
same weights in train and eval mode.
"""
from __future__ import annotations

import copy
import json
import pathlib

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import fastblocks.models as zoo
from fastblocks.models._blocks import SqueezeExcitation
from fastblocks.models.se_resnet import SEBottleneck
from fastblocks.models.shufflenet_v1 import STAGE_OUT_CHANNELS, ShuffleNetV1, ShuffleV1Unit
from fastblocks.models.shufflenet_v2 import ShuffleV2Unit, channel_shuffle
from fastblocks.models.xception import SeparableConv2d, Xception

from tolerances import assert_parity

KEYS = pathlib.Path(__file__).resolve().parent / "data" / "torchvision_keys"

# name -> test resolution (batch 2). The 22-28M-parameter nets take about 2 s each for one
# forward + backward at this size (1 thread, the 2-core dev machine); their fused-parity tests
# (8-15 s each: float64 and float32 copies, train and eval) carry the slow marker.
SMALL = {f"shufflenet_v1_g{g}": 64 for g in (1, 2, 3, 4, 8)}
SMALL.update({f"shufflenet_v2_{w}": 64 for w in ("x0_5", "x1_0", "x1_5", "x2_0")})
LARGE = {"xception": 71, "se_resnet50": 64, "se_resnext50_32x4d": 64}  # 71: Keras' minimum
ALL = {**SMALL, **LARGE}


def _cases(slow_large: bool):
    mark = [pytest.mark.slow] if slow_large else []
    return ([pytest.param(n, r, id=n) for n, r in SMALL.items()]
            + [pytest.param(n, r, id=n, marks=mark) for n, r in LARGE.items()])


def test_every_name_is_registered():
    assert set(ALL) <= set(zoo.list_models())
    assert zoo.list_models("shufflenet_v1_g*") == [f"shufflenet_v1_g{g}" for g in (1, 2, 3, 4, 8)]
    assert zoo.model_info("xception").input_size == (3, 299, 299)
    for name in ALL:
        assert zoo.model_info(name).paper, name


def test_unknown_names_and_bad_knobs_raise():
    with pytest.raises(ValueError, match="shufflenet_v1_g3"):
        zoo.create_model("shufflenet_v1_g5", fused=False)
    with pytest.raises(ValueError, match="groups must be one of"):
        ShuffleNetV1(groups=5)
    with pytest.raises(ValueError, match="scale must be positive"):
        zoo.create_model("shufflenet_v1_g3", fused=False, scale=0)
    with pytest.raises(ValueError, match="num_classes"):
        zoo.create_model("xception", fused=False, num_classes=0)
    with pytest.raises(ValueError, match="inp == oup"):
        ShuffleV2Unit(24, 48, 1)
    with pytest.raises(ValueError, match="multiple of groups=3"):
        ShuffleV1Unit(24, 100, 2, 3)


@pytest.mark.parametrize("name,res", _cases(slow_large=False))
def test_forward_backward(name, res):
    model = zoo.create_model(name, fused=False, num_classes=10)
    x = torch.randn(2, 3, res, res, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", list(ALL))
def test_traces_with_fx(name):
    """optimize()'s torch.fx path finds inline patterns (ShuffleNet's view-transpose-view
    shuffle, the SE gate's multiply) only where a model traces."""
    model = zoo.create_model(name, fused=False, num_classes=10).eval()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)


# Published parameter counts (ImageNet, 1000 classes) and where each comes from. Ours must be
# within 1%; the exact counts of ours are written beside them (measured with this file's code).
PUBLISHED = [
    # torchvision.models.shufflenet_v2_x1_0: 2,278,604 ("2.3M", Ma et al. 2018 Table 8);
    # the other widths' figures are torchvision's too (its docs' model table: 1.4M, 3.5M, 7.4M)
    ("shufflenet_v2_x0_5", 1_366_792, "torchvision 0.29 shufflenet_v2_x0_5"),
    ("shufflenet_v2_x1_0", 2_278_604, "torchvision 0.29 shufflenet_v2_x1_0"),
    ("shufflenet_v2_x1_5", 3_503_624, "torchvision 0.29 shufflenet_v2_x1_5"),
    ("shufflenet_v2_x2_0", 7_393_996, "torchvision 0.29 shufflenet_v2_x2_0"),
    # ShuffleNet v1 1x g=3: 1.87M in the OpenMMLab mmclassification model zoo (ShuffleNetV1 1.0x
    # (group=3), 1.87M params, 0.146 GFLOPs); Megvii's reference ShuffleNet-Series README rounds
    # the same net to 1.9M (its model has no fc bias: 1,000 fewer). Ours: 1,865,728.
    ("shufflenet_v1_g3", 1_870_000, "mmclassification model zoo, ShuffleNetV1 1.0x (group=3)"),
    # ShuffleNet v1 1x g=8: Megvii ShuffleNet-Series README 2.4M; 2.43M measured on Megvii's
    # model with calflops. Ours: 2,434,768.
    ("shufflenet_v1_g8", 2_430_000, "Megvii ShuffleNet-Series (2.4M; 2.43M by calflops)"),
    # Keras keras.applications.Xception: Trainable params 22,855,952 (Total 22,910,480 with
    # BN's moving mean/variance, compared separately below).
    ("xception", 22_855_952, "keras.applications.Xception trainable params (Chollet)"),
    # SE-ResNet-50: 28.09M (mmclassification model zoo; Cadene pretrainedmodels se_resnet50,
    # 28,088,024); Hu et al. 2018 quote ~2.5M over ResNet-50's ~25.6M.
    ("se_resnet50", 28_090_000, "mmclassification model zoo, SE-ResNet-50 28.09M"),
    # SE-ResNeXt-50 32x4d: 27.56M (GluonCV model zoo seresnext50_32x4d; Cadene's 27,559,896).
    ("se_resnext50_32x4d", 27_560_000, "GluonCV model zoo seresnext50_32x4d 27.56M"),
]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,published,source", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_parameter_count_matches_published(name, published, source):
    with torch.device("meta"):  # shapes only: no 28M-weight initialisation on the CPU
        model = zoo.create_model(name, fused=False)
    ours = _num_params(model)
    assert abs(ours - published) <= 0.01 * published, \
        f"{name}: {ours:,} vs {published:,} ({source})"


def test_xception_counts_equal_keras_exactly():
    with torch.device("meta"):
        model = zoo.create_model("xception", fused=False)
    stats = sum(b.numel() for k, b in model.named_buffers() if k.endswith(("running_mean",
                                                                            "running_var")))
    # keras.applications.Xception().summary(): Total 22,910,480 = trainable 22,855,952 +
    # non-trainable 54,528 (BN moving statistics)
    assert _num_params(model) == 22_855_952
    assert stats == 54_528


@pytest.mark.parametrize("name", [n for n in SMALL if n.startswith("shufflenet_v2")])
def test_shufflenet_v2_state_dict_is_torchvisions(name):
    """Keys, order and shapes equal torchvision's (tests/data/dump_torchvision_keys.py),
    so torchvision's checkpoints load with load_state_dict as they are."""
    expected = json.loads((KEYS / f"{name}.json").read_text())
    with torch.device("meta"):
        model = zoo.create_model(name, fused=False)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == expected["state_dict"]
    assert _num_params(model) == expected["num_parameters"]


def test_shufflenet_v2_loads_torchvision_weights_and_matches():
    """Where torchvision imports (not beside CI's CPU torch; on the GPU machine it does)."""
    tv = pytest.importorskip("torchvision.models")
    ref = tv.shufflenet_v2_x0_5(weights=None).eval()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ours = zoo.create_model("shufflenet_v2_x0_5", fused=False).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_channel_shuffle_is_torchs():
    x = torch.randn(2, 12, 3, 5)
    for g in (1, 2, 3, 4, 6):
        torch.testing.assert_close(channel_shuffle(x, g), nn.ChannelShuffle(g)(x), rtol=0, atol=0)
    # channel j * g + i of the output is channel i * (C / g) + j of the input
    assert channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 3).flatten().tolist() == \
        [0, 2, 4, 1, 3, 5]


def test_shufflenet_v1_follows_table_1():
    for g, widths in STAGE_OUT_CHANNELS.items():
        with torch.device("meta"):
            model = ShuffleNetV1(groups=g)
        assert model.conv1[0].out_channels == 24
        for i, w in enumerate(widths, 2):
            stage = getattr(model, f"stage{i}")
            assert len(stage) == (4, 8, 4)[i - 2]
            for unit in stage:
                # the stride-2 unit's branch adds w - inp channels to the inp of the shortcut
                assert unit.expand[0].out_channels == (w - unit.compress[0].in_channels
                                                       if unit.stride == 2 else w)
                assert unit.compress[0].out_channels == w // 4
                assert unit.expand[0].groups == g
                assert unit.depthwise[0].groups == w // 4
            # the first pointwise conv of stage 2 is not grouped; every later one is
            first = stage[0].compress[0]
            assert first.groups == (1 if i == 2 else g)
            assert all(u.compress[0].groups == g for u in stage[1:])
    # scale: Megvii's released 0.5x widths for g=3 and g=8
    half3, half8 = ShuffleNetV1(3, 0.5).eval(), ShuffleNetV1(8, 0.5).eval()
    for model, widths in ((half3, [12, 120, 240, 480]), (half8, [16, 192, 384, 768])):
        x = model.conv1(torch.randn(1, 3, 32, 32))
        assert x.shape[1] == widths[0]
        x = model.maxpool(x)
        for i, w in zip((2, 3, 4), widths[1:]):
            x = getattr(model, f"stage{i}")(x)
            assert x.shape[1] == w
    assert ShuffleNetV1(3, 2.0).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_shufflenet_v1_units():
    torch.manual_seed(1)
    # stride 2: the shortcut is the 3x3/2 average pool of the input, concatenated (then ReLU)
    unit = ShuffleV1Unit(24, 240, 2, 3, group_first=False).eval()
    x = torch.randn(2, 24, 9, 9)
    out = unit(x)
    assert out.shape == (2, 240, 5, 5)
    torch.testing.assert_close(out[:, :24], F.relu(F.avg_pool2d(x, 3, 2, 1)))
    # stride 1: residual add, then ReLU; the branch is compress -> shuffle -> dw -> expand
    unit = ShuffleV1Unit(240, 240, 1, 3).eval()
    x = torch.randn(2, 240, 5, 5)
    branch = unit.expand(unit.depthwise(channel_shuffle(unit.compress(x), 3)))
    torch.testing.assert_close(unit(x), F.relu(branch + x))
    # no ReLU after the depthwise conv (the paper, Sec. 3.2)
    assert not any(isinstance(m, nn.ReLU) for m in unit.depthwise)


def test_shufflenet_v2_unit():
    unit = ShuffleV2Unit(48, 48, 1).eval()
    x = torch.randn(2, 48, 6, 6)
    ref = channel_shuffle(torch.cat((x[:, :24], unit.branch2(x[:, 24:])), 1), 2)
    torch.testing.assert_close(unit(x), ref)
    assert ShuffleV2Unit(24, 116, 2)(torch.randn(1, 24, 7, 7)).shape == (1, 116, 4, 4)


def test_xception_layout():
    with torch.device("meta"):
        model = Xception()
        feats = []
        model.conv4.register_forward_hook(lambda m, i, o: feats.append(o.shape))
        assert model(torch.empty(1, 3, 299, 299)).shape == (1, 1000)
    assert feats == [(1, 2048, 10, 10)]  # 299 -> 10x10 before the global pool (Fig. 5)
    seps = [m for m in model.modules() if isinstance(m, SeparableConv2d)]
    for s in seps:  # depthwise (groups = in_channels) then pointwise 1x1, no bias
        assert s.conv1.groups == s.conv1.in_channels == s.conv1.out_channels
        assert s.conv1.kernel_size == (3, 3) and s.pointwise.kernel_size == (1, 1)
        assert s.conv1.bias is None and s.pointwise.bias is None
    # "36 convolutional layers" (Sec. 3): 2 stem convs + 34 separable convs
    assert len(seps) == 34
    # 8 middle-flow blocks with identity shortcuts, 4 with 1x1/2 projections
    blocks = [getattr(model, f"block{i}") for i in range(1, 13)]
    assert [b.skip is None for b in blocks] == [False] * 3 + [True] * 8 + [False]
    x = torch.randn(2, 3, 32, 32)
    assert Xception(num_classes=3)(x).shape == (2, 3)


def test_se_blocks():
    with torch.device("meta"):
        for name, groups in (("se_resnet50", 1), ("se_resnext50_32x4d", 32)):
            model = zoo.create_model(name, fused=False)
            blocks = [m for m in model.modules() if isinstance(m, SEBottleneck)]
            assert len(blocks) == 16
            for b in blocks:
                c = b.conv3.out_channels
                assert isinstance(b.se_module, SqueezeExcitation)
                assert (b.se_module.fc1.in_channels, b.se_module.fc1.out_channels) == (c, c // 16)
                assert b.conv2.groups == groups
            if groups == 32:  # 32x4d: 128 wide at planes 64
                assert blocks[0].conv2.in_channels == 128
    # the block: bottleneck -> SE gate (pool -> fc -> ReLU -> fc -> sigmoid) -> scale -> + x -> ReLU
    block = SEBottleneck(256, 64).eval()
    x = torch.randn(2, 256, 5, 5)
    y = block.relu(block.bn1(block.conv1(x)))
    y = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(y)))))
    se = block.se_module
    gate = torch.sigmoid(se.fc2(F.relu(se.fc1(y.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(block(x), F.relu(y * gate + x))


# --- fused (fastblocks.optimize) against plain, same weights -------------------------------


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = torch.randn(c, generator=gen) * 0.1
            m.running_mean = torch.randn(c, generator=gen) * 0.1
            m.running_var = 0.5 + torch.rand(c, generator=gen)


def _run(model, x, grad_out):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    out.backward(grad_out)
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name,res", _cases(slow_large=True))
def test_fused_equals_plain(name, res, train):
    """fastblocks.optimize of a deepcopy (what create_model(fused=True) does) equals the plain
    model with the same weights: in float64 the output, the input and parameter gradients and
    (train mode) BN running statistics at assert_close defaults; in float32 the output by the
    rule for long fp32 reductions (a whole network is one; fastblocks.testing): assert_close, or
    an error against the float64 model at most 2x the plain fp32 model's own."""
    optimize = pytest.importorskip("fastblocks.optimize",
                                   reason="fastblocks.optimize is not merged yet").optimize
    torch.manual_seed(0)
    plain = zoo.create_model(name, fused=False, num_classes=10)
    _randomise_norms(plain)
    hi = copy.deepcopy(plain).double()
    fused_hi = optimize(copy.deepcopy(hi), inplace=True)
    assert list(fused_hi.state_dict()) == list(plain.state_dict())
    hi.train(train), fused_hi.train(train)
    x = torch.randn(2, 3, res, res, dtype=torch.float64)
    grad_out = torch.randn(2, 10, dtype=torch.float64)
    out, gx, grads = _run(fused_hi, x, grad_out)
    ref, rgx, rgrads = _run(hi, x, grad_out)
    assert_parity(out, ref, what=f"{name} float64 output")
    assert_parity(gx, rgx, what=f"{name} float64 input grad")
    for k in rgrads:
        assert_parity(grads[k], rgrads[k], what=f"{name} float64 grad of {k}")
    if train:  # running statistics updated as nn.BatchNorm2d does
        fs, hs = fused_hi.state_dict(), hi.state_dict()
        for k in hs:
            assert_parity(fs[k], hs[k], what=f"{name} {k} after a train step")
    fused = optimize(copy.deepcopy(plain), inplace=True)
    plain.train(train), fused.train(train)
    with torch.no_grad():
        assert_parity(fused(x.float()), plain(x.float()), ref, what=f"{name} float32 output",
                      reduction=True)


@pytest.mark.parametrize("name", ["shufflenet_v1_g3", "shufflenet_v2_x1_0"])
def test_fused_state_dict_is_plains(name):
    """create_model(fused=True) and the plain model load each other's state_dicts (strict);
    one model per family here, as test_fused_equals_plain checks every model's keys."""
    pytest.importorskip("fastblocks.optimize", reason="fastblocks.optimize is not merged yet")
    plain = zoo.create_model(name, fused=False, num_classes=10)
    _randomise_norms(plain)
    fused = zoo.create_model(name, fused=True, num_classes=10)
    fused.load_state_dict(plain.state_dict(), strict=True)
    back = zoo.create_model(name, fused=False, num_classes=10)
    back.load_state_dict(fused.state_dict(), strict=True)
    for k, v in plain.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_parity(fused.eval()(x), plain.eval()(x), copy.deepcopy(plain).double()(x.double()),
                      what=f"{name} output after load_state_dict", reduction=True)


@pytest.mark.slow
def test_fused_shufflenet_v2_compiles_fullgraph():
    """No graph break in the fused ShuffleNetV2 x1.0 (issue 14). aot_eager: dynamo's capture and
    AOT autograd's tracing through our ops' fake kernels are what fullgraph checks; inductor's
    C++ codegen of the whole net took 163 s on the shared 2-core dev machine (aot_eager: 24 s)."""
    pytest.importorskip("fastblocks.optimize", reason="fastblocks.optimize is not merged yet")
    plain = zoo.create_model("shufflenet_v2_x1_0", fused=False, num_classes=10)
    _randomise_norms(plain)
    fused = zoo.create_model("shufflenet_v2_x1_0", fused=True, num_classes=10)
    fused.load_state_dict(plain.state_dict())
    plain.eval(), fused.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")(x)
        ref, ref_hi = plain(x), copy.deepcopy(plain).double()(x.double())
    assert_parity(compiled, ref, ref_hi, what="compiled fused output", reduction=True)
