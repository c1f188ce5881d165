"""Zoo part 2: the architectures whose training and test behaviour differ or that have a
mechanism of their own (auxiliary heads, shake-shake, IBN, Siamese, ViT), each tested in
both modes where it differs."""
from __future__ import annotations

import pytest
import torch

import fastblocks
from zoo_checks import check_architecture, param_count

PUBLISHED = {
    "googlenet": (13_004_888, "torchvision googlenet with both auxiliary heads (6.6M without)"),
    "shake_shake_26_2x32d": (2_900_000, "Gastaldi 2017, Table 1: 26 2x32d, 2.9M"),
    "ibn_resnet50_a": (25_557_032, "Pan et al. 2018: as ResNet-50, 25.6M"),
    "vit_b_16": (86_567_656, "torchvision vit_b_16 (paper: 86M)"),
    "vit_tiny_16": (5_717_416, "DeiT-Ti (Touvron et al. 2021): 5.7M"),
    "siamese": (11_242_176, "ResNet-18 encoder with a 128-d embedding"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count(name):
    want, source = PUBLISHED[name]
    got = param_count(name)
    assert abs(got - want) <= 0.01 * want, f"{name}: {got} vs {want} ({source})"


@pytest.mark.parametrize("name, size, kwargs", [
    ("shake_shake_26_2x32d", 32, {}),
    ("ibn_resnet50_a", 32, {}),
    ("vit_tiny_16", 32, {"image_size": 32}),
    ("googlenet", 64, {}),
    ("siamese", 32, {"num_classes": 16}),  # one input: its embedding
    ("fractalnet", 32, {}),
])
def test_architecture(name, size, kwargs):
    check_architecture(name, size, **kwargs)


@pytest.mark.slow
def test_architecture_vit_b_16():
    check_architecture("vit_b_16", 32, image_size=32)


def test_siamese_shared_encoder_and_contrastive_loss():
    from fastblocks.models.siamese import contrastive_loss
    torch.manual_seed(0)
    model = fastblocks.create_model("siamese", fused=False, backbone="resnet18", num_classes=16)
    model.eval()  # per-image embeddings (train-mode BN would mix the batch)
    x = torch.randn(2, 3, 32, 32)
    e1, e2, d = model(x, x.flip(0))
    torch.testing.assert_close(e1, e2.flip(0))  # one encoder: the same image, the same embedding
    torch.testing.assert_close(d, (e1 - e2).norm(dim=1))
    y = torch.tensor([1.0, 0.0])
    loss = contrastive_loss(d, y, margin=2.0)
    torch.testing.assert_close(loss, (d[0] ** 2 + torch.relu(2.0 - d[1]) ** 2) / 2)
    loss.backward()
    assert model.encoder.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="distance"):
        fastblocks.create_model("siamese", fused=False, distance="manhattan")


def test_googlenet_auxiliary_heads_in_training_only():
    model = fastblocks.create_model("googlenet", fused=False, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 5) for o in out)
    model.eval()
    assert model(x).shape == (2, 5)
    no_aux = fastblocks.create_model("googlenet", fused=False, aux_logits=False)
    assert no_aux.aux1 is None and no_aux(x).shape == (2, 1000)


def test_shake_shake_forward_alpha_backward_beta():
    from fastblocks.models.shake_shake import shake_mix
    a = torch.randn(64, 1, 1, 1, requires_grad=True)
    b = torch.randn(64, 1, 1, 1, requires_grad=True)
    torch.manual_seed(0)
    out = shake_mix(a, b, training=True)
    torch.manual_seed(0)
    alpha, beta = torch.rand(64, 1, 1, 1), torch.rand(64, 1, 1, 1)
    torch.testing.assert_close(out, alpha * a + (1 - alpha) * b)
    out.sum().backward()
    torch.testing.assert_close(a.grad, beta)          # backward uses beta, not alpha
    torch.testing.assert_close(b.grad, 1 - beta)
    assert not torch.allclose(alpha, beta)
    torch.testing.assert_close(shake_mix(a, b, training=False), 0.5 * (a + b))


def test_ibn_a_splits_instance_and_batch_norm():
    from fastblocks.models.ibn_resnet import IBN
    model = fastblocks.create_model("ibn_resnet50_a", fused=False)
    ibns = [m for m in model.modules() if isinstance(m, IBN)]
    assert len(ibns) == 3 + 4 + 6  # stages 1-3; stage 4 keeps BatchNorm
    assert all(isinstance(b.bn1, torch.nn.BatchNorm2d) for b in model.layer4)
    ibn = ibns[0].eval()
    x = torch.randn(2, ibn.half * 2, 5, 5)
    ref = torch.cat([ibn.IN(x[:, :ibn.half]), ibn.BN(x[:, ibn.half:])], 1)
    torch.testing.assert_close(ibn(x), ref)


def test_fractalnet_expansion_join_and_drop_path():
    from fastblocks.models.fractalnet import FractalBlock
    model = fastblocks.create_model("fractalnet", fused=False)
    # the expansion rule's count: per block (C = 3) 3 first units cin->w and 4 units w->w
    convs = sum(3 * 9 * ci * w + 4 * 9 * w * w
                for ci, w in zip((3, 64, 128, 256, 512), (64, 128, 256, 512, 512)))
    bn = 2 * 7 * (64 + 128 + 256 + 512 + 512)
    assert param_count("fractalnet") == convs + bn + 512 * 10 + 10
    torch.manual_seed(0)
    block = FractalBlock(4, 4, 3, local_drop=0.0, dropout=0.0).eval()
    x = torch.randn(1, 4, 6, 6)
    p = block.paths
    # f_3(z) = join(f_2(f_2(z)), conv(z)), f_2(z) = join(conv(conv(z)), conv(z))
    inner = (p[2][1](p[2][0](x)) + p[1][0](x)) / 2
    second = (p[2][3](p[2][2](inner)) + p[1][1](inner) + p[0][0](x)) / 3
    torch.testing.assert_close(block(x), second)
    torch.testing.assert_close(block(x, column=0), p[0][0](x))  # global drop-path: one column
    # local drop-path keeps at least one input of every join
    block.train()
    block.local_drop = 1.0
    assert torch.isfinite(block(x)).all()
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_rejects_a_wrong_input_size():
    model = fastblocks.create_model("vit_tiny_16", fused=False, image_size=32)
    with pytest.raises(ValueError, match="input must be 32x32"):
        model(torch.randn(1, 3, 48, 48))
