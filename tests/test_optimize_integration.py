"""An optimized model where users use it: torch.compile(fullgraph=True), torch.export, CPU
autocast (bfloat16), .to(dtype), channels_last, deepcopy, pickling and DistributedDataParallel
(gloo, 2 processes on CPU). Each compares with the eager model by fastblocks.testing's rule."""
from __future__ import annotations

import copy
import io
import os
import pickle
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastblocks
from fastblocks.models._blocks import ConvNormActivation
from fastblocks.testing import compare

from _optimize_helpers import assert_same_model, one_thread  # noqa: F401 (autouse fixture)
from test_optimize import InlineComposites


def small_model(seed: int = 0) -> nn.Sequential:
    """Every swap kind once: conv-BN-hardswish, depthwise-BN-relu6, conv-BN, standalone SiLU
    and depthwise conv, inline activations; BN statistics and affine away from the identity."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        ConvNormActivation(3, 16, 3, stride=2, activation_layer=nn.Hardswish),
        ConvNormActivation(16, 16, 3, groups=16, activation_layer=nn.ReLU6),
        ConvNormActivation(16, 24, 1, activation_layer=None),
        nn.SiLU(),
        nn.Conv2d(24, 24, 3, padding=1, groups=24),
        InlineComposites(24))                       # rewritten by torch.fx: InlineFused
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
    return m


def _x(n=2, size=12):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compile_fullgraph(train):
    plain = small_model()
    fused = fastblocks.optimize(plain)
    # aot_eager traces exactly what inductor gets (dynamo + AOT autograd), in seconds
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    assert_same_model(plain, compiled, _x(), train=train, steps=2)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_export(train):
    plain = small_model()
    fused = fastblocks.optimize(plain).train(train)
    plain.train(train)
    x = _x()
    ep = torch.export.export(fused, (x,))
    out = ep.module()(x)
    ok, _, msg = compare(out, plain(x).detach())
    assert ok, msg
    if train:  # the exported program updates the running statistics as BatchNorm2d does
        for (k, a), (_, b) in zip(ep.module().state_dict().items(), plain.state_dict().items()):
            torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_autocast_bf16(train):
    plain = small_model()
    fused = fastblocks.optimize(plain)
    ref = copy.deepcopy(plain).double()
    x = _x()
    outs = []
    for m, dtype_ctx in ((plain, True), (fused, True), (ref, False)):
        m.train(train)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_ctx):
            outs.append(m(x.double() if m is ref else x))
    assert outs[1].dtype == outs[0].dtype == torch.bfloat16
    ok, _, msg = compare(outs[1], outs[0], outs[2])
    assert ok, msg
    outs[1].float().sum().backward()  # backward through autocast works


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_to_dtype(dtype):
    plain = small_model()
    fused = fastblocks.optimize(plain)
    ref = copy.deepcopy(plain).double()
    plain, fused = plain.to(dtype), fused.to(dtype)
    for train in (False, True):
        for m in (plain, fused, ref):
            m.train(train)
        x = _x()
        with torch.no_grad():
            a, b, r = fused(x.to(dtype)), plain(x.to(dtype)), ref(x.double())
        ok, _, msg = compare(a, b, r)
        assert ok, f"{dtype} train={train}: {msg}"


def test_channels_last():
    plain = small_model()
    fused = fastblocks.optimize(plain)
    plain = plain.to(memory_format=torch.channels_last)
    fused = fused.to(memory_format=torch.channels_last)
    x = _x().contiguous(memory_format=torch.channels_last)
    for train in (False, True):
        assert_same_model(plain, fused, x, train=train)
        fused.train(train)
        with torch.no_grad():
            assert fused(x).is_contiguous(memory_format=torch.channels_last)


def test_deepcopy_and_pickle():
    plain = small_model()
    fused = fastblocks.optimize(plain).eval()
    x = _x()
    with torch.no_grad():
        fused(x)  # fills the eval-mode fold caches
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        buf = io.BytesIO()
        torch.save(clone, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for m in (clone, loaded):
            assert m.fastblocks_report.counts() == fused.fastblocks_report.counts()
            assert_same_model(plain, m, x, train=False)
            assert_same_model(copy.deepcopy(plain), m, x, train=True)
            # the copy is independent: training it does not touch the original's statistics
        assert clone[0][1].running_mean.data_ptr() != fused[0][1].running_mean.data_ptr()


def test_eval_after_weight_update_refolds():
    plain = small_model()
    fused = fastblocks.optimize(plain).eval()
    plain.eval()
    x = _x()
    with torch.no_grad():
        fused(x)
        for m in (plain, fused):  # in-place updates, as an optimizer or load_state_dict does
            m[0][0].weight.mul_(1.5)
            m[0][1].running_var.add_(0.25)
        torch.testing.assert_close(fused(x), plain(x))


# ---- DistributedDataParallel (gloo, 2 processes) ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name in ("plain", "fused"):
            model = small_model(seed=0)
            if name == "fused":
                model = fastblocks.optimize(model)
            ddp = DDP(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
            gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
            for _ in range(3):
                opt.zero_grad()
                ddp(torch.randn(2, 3, 12, 12, generator=gen)).square().mean().backward()
                opt.step()
            results[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~30 s on the shared 2-core box: two fresh processes import torch
def test_ddp_gloo_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for r in (r0, r1):
        for k, v in r["plain"].items():  # optimized equals plain DDP on each rank
            torch.testing.assert_close(r["fused"][k], v, msg=k)
    for k, v in r0["fused"].items():
        if "running_" not in k and "num_batches" not in k:
            # the ranks' parameters agree (gradients all-reduced); running statistics are
            # broadcast from rank 0 before each forward, so after the last one they differ
            torch.testing.assert_close(r1["fused"][k], v, msg=k)


def test_no_grad_eval_after_training_uses_new_statistics():
    # the classic loop: validate under no_grad, train an epoch, validate again. BatchNorm's
    # running statistics change inside F.batch_norm without a version bump: the fold cached
    # in the first validation must not serve the second
    plain = small_model()
    fused = fastblocks.optimize(plain)
    x = _x()
    for epoch in range(2):
        for m in (plain, fused):
            m.train()
            m(x).sum().backward()  # updates the running statistics
            m.eval()
        with torch.no_grad():
            torch.testing.assert_close(fused(x), plain(x), msg=f"epoch {epoch}")
