"""The autotune convention of kernels/_autotune.py: every launched Triton kernel is wrapped by
the project's helper with an explicit key; the interpreter (CPU, CI) runs only the prior
config and never benchmarks; the GPU path's pruning, a tuning run end to end (with a stand-in
timer, in the interpreter) and its record for bench/gpu_session.sh."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import fastblocks.kernels as kernels_pkg  # noqa: E402
from fastblocks.kernels import _autotune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("autotune_record",
                                               ROOT / "bench" / "autotune_record.py")
autotune_record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(autotune_record)

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="interpreter-path checks (CPU); the GPU tunes for real")


def _kernel_modules():
    return [importlib.import_module(f"fastblocks.kernels.{m.name}")
            for m in pkgutil.iter_modules(kernels_pkg.__path__)]


def _tuners():
    """{module.name: Autotuner} over every kernel module."""
    out = {}
    for mod in _kernel_modules():
        for name, obj in vars(mod).items():
            if isinstance(obj, Autotuner):
                out[f"{mod.__name__.rsplit('.', 1)[-1]}.{name}"] = obj
    return out


def test_every_launched_kernel_is_autotuned_with_an_explicit_key():
    tuned = _tuners()
    assert len(tuned) >= 18, sorted(tuned)
    for mod in _kernel_modules():
        src = inspect.getsource(mod)
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction):
                # a bare @triton.jit may only be a device function, never launched
                assert not re.search(rf"\b{name}\[", src), f"{mod.__name__}.{name} launched untuned"
                assert not name.endswith("_kernel"), f"{mod.__name__}.{name} is not autotuned"
    for name, t in tuned.items():
        assert t in _autotune.TUNED, f"{name}: use kernels/_autotune.autotune, not triton's own"
        assert t.keys and t.keys == t.fastblocks_key, name
        assert set(t.keys) <= set(t.arg_names), name
        assert 2 <= len(t.configs) <= 6, name
        assert t.configs[0] is t.fastblocks_prior, name
        tuned_names = {k for c in t.configs for k in c.kwargs}
        assert not tuned_names & set(t.keys), f"{name}: a tuned meta-parameter is in the key"


@pytest.fixture
def fresh_caches():
    """Empty tuning caches for the test, the previous ones back afterwards."""
    saved = {id(t): dict(t.cache) for t in _autotune.TUNED}
    for t in _autotune.TUNED:
        t.cache.clear()
    yield
    for t in _autotune.TUNED:
        t.cache.clear()
        t.cache.update(saved.get(id(t), {}))


def _launch_every_family():
    """Each of the 18 Triton kernels once, on tiny shapes."""
    from fastblocks.kernels import (activation, conv_bn_act, depthwise, grouped_conv, shuffle,
                                    squeeze_excite)
    x = torch.randn(2, 4, 5, 6)
    activation.activation_backward(x, activation.activation_forward(x, 3), 3)
    w = torch.randn(4, 1, 3, 3)
    for cl in (False, True):
        xc = x.contiguous(memory_format=torch.channels_last) if cl else x
        y = depthwise.depthwise_forward(xc, w, None, (1, 1), (1, 1), (1, 1), (5, 6), 1, cl)
        depthwise.depthwise_backward_input(y, w, (4, 5, 6), (1, 1), (1, 1), (1, 1), cl)
        depthwise.depthwise_backward_weight(y, xc, (3, 3), (1, 1), (1, 1), (1, 1), cl)
        w1, w2 = torch.randn(2, 4), torch.randn(4, 2)
        y, pooled = squeeze_excite.squeeze_excite_forward(xc, w1, None, w2, None, 1, 0, cl)
        squeeze_excite.squeeze_excite_backward(y, xc, pooled, w1, None, w2, None, 1, 0, cl)
    y = shuffle.channel_shuffle_forward(x, x, None, 2, 1, False)
    shuffle.channel_shuffle_backward(y, y, 4, 2, 1, False)
    grouped_conv.grouped_conv1x1_forward(x, torch.randn(6, 2, 1, 1), None, 2, 1, 3, False)
    wb, bb = torch.ones(4), torch.zeros(4)
    y, mean, invstd = conv_bn_act.bn_act_train_forward(x, wb, bb, 1e-5, 1, False)
    conv_bn_act.bn_act_train_backward(y, x, wb, bb, mean, invstd, 1, False, (True, True, True))


def test_interpreter_runs_exactly_the_prior(fresh_caches, monkeypatch):
    def no_timing(*a, **k):
        raise AssertionError("the interpreter must never benchmark")
    for t in _autotune.TUNED:
        monkeypatch.setattr(t, "do_bench", no_timing)
    _launch_every_family()
    used = {_autotune.kernel_name(t): t for t in _autotune.TUNED if t.cache}
    assert len(used) == 18, sorted(used)
    for name, t in used.items():
        assert all(c is t.fastblocks_prior for c in t.cache.values()), name


def _prune(tuner, args, **kwargs):
    tuner.nargs = args
    try:
        return tuner.prune_configs(kwargs)
    finally:
        tuner.nargs = None


def test_gpu_path_prunes_to_distinct_kernels(monkeypatch):
    """Off the interpreter (the GPU), every config is a candidate, except those that derive
    the same kernel for the shape or that a prune drops; FASTBLOCKS_AUTOTUNE=prior: the prior."""
    from fastblocks.kernels import depthwise, grouped_conv
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv(_autotune.PRIOR_ENV, raising=False)
    k = depthwise._dw_fwd_nchw_kernel
    big = _prune(k, {"OH": 56, "OW": 56})
    assert [(c.kwargs["TILE"], c.num_warps) for c in big] == [(1024, 8), (512, 4), (2048, 16)]
    # a 7x7 plane clips every tile to 8x8: the three differ only in their warps
    small = _prune(k, {"OH": 7, "OW": 7})
    assert len(small) == 3
    from fastblocks.kernels import squeeze_excite
    r = squeeze_excite._reduce_nchw_kernel  # 4 planes of 7x7: 4096 and 8192 both give 4 x 64
    assert _prune(r, {"planes": 4, "BLOCK_HW": 64}) == r.configs[:2]
    g = grouped_conv._gconv1x1_kernel
    assert len(_prune(g, {"J": 64, "K": 64})) == 4
    assert [c.kwargs["BLOCK_N"] for c in _prune(g, {"J": 20, "K": 8})] == [32, 32, 32]
    monkeypatch.setenv(_autotune.BUDGET_ENV, "45")
    monkeypatch.setattr(_autotune, "_spent_s", 44.0)
    assert len(_prune(k, {"OH": 56, "OW": 56})) == 3
    monkeypatch.setattr(_autotune, "_spent_s", 45.5)  # the tuning budget is spent
    assert _prune(k, {"OH": 56, "OW": 56}) == [k.fastblocks_prior]
    monkeypatch.delenv(_autotune.BUDGET_ENV)
    monkeypatch.setenv(_autotune.PRIOR_ENV, "prior")
    assert _prune(k, {"OH": 56, "OW": 56}) == [k.fastblocks_prior]


def test_tuning_run_end_to_end(fresh_caches, monkeypatch, tmp_path):
    """The tuning path in the interpreter with a stand-in timer that ranks the last config
    first: every config runs, the non-prior choice still computes the right result, and the
    log + record of bench/gpu_session.sh hold it."""
    from fastblocks.kernels import activation, depthwise
    log = tmp_path / "tune.jsonl"
    monkeypatch.setattr(_autotune, "prior_only", lambda: False)
    monkeypatch.setattr(triton.knobs.autotuning, "listener", None)
    # Autotuner.run looks for the JITFunction under it before calling the listener; in the
    # interpreter that is an InterpretedFunction (on a GPU the JITFunction is there)
    from triton.runtime import autotuner, interpreter
    monkeypatch.setattr(autotuner, "JITFunction", (JITFunction, interpreter.InterpretedFunction))
    _autotune._install_log(str(log))
    calls = []

    def fake_bench(fn, quantiles):
        fn()
        calls.append(1)
        t = 1.0 / len(calls)  # later configs look faster
        return [t, t, t]
    for t in (activation._activation_forward_kernel, depthwise._dw_fwd_nchw_kernel):
        monkeypatch.setattr(t, "do_bench", fake_bench)
    x = torch.randn(3, 5, 17, 19)
    assert torch.equal(activation.activation_forward(x, 1), F.relu(x))
    a = activation._activation_forward_kernel
    assert len(calls) == 3 and list(a.cache.values()) == [a.configs[-1]]
    w = torch.randn(5, 1, 3, 3)
    y = depthwise.depthwise_forward(x, w, None, (1, 1), (1, 1), (1, 1), (17, 19), 0, False)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1, groups=5))
    chosen = list(depthwise._dw_fwd_nchw_kernel.cache.values())
    assert chosen[0].kwargs["TILE"] != 1024
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert [r["kernel"] for r in lines] == ["activation._activation_forward_kernel",
                                            "depthwise._dw_fwd_nchw_kernel"]
    assert lines[0]["config"] == {"BLOCK": 2048, "num_warps": 8, "num_stages": 3}
    assert lines[0]["prior"]["BLOCK"] == 4096 and len(lines[0]["timings_ms"]) == 3
    out = tmp_path / "autotune.json"
    assert autotune_record.main([str(log), str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["tunings"] == 2 and rec["changed"] == 2
    assert rec["kernels"]["activation._activation_forward_kernel"][0]["key"][0] == "1"
    assert autotune_record.main([str(tmp_path / "absent.jsonl"), str(out)]) == 0
    assert json.loads(out.read_text())["tunings"] == 0


def test_size_class_buckets_by_powers_of_four():
    assert [_autotune.size_class(n) for n in (0, 1, 2, 4, 5, 16, 17, 64, 65)] == \
        [3, 3, 5, 5, 7, 7, 9, 9, 11]
    for e in range(2, 34):
        n = 2 ** e
        c = _autotune.size_class(n)
        assert c % 2 == 1 and c != 1
        assert _autotune.size_class(n + 1) in (c, c + 2)
    assert _autotune.size_class(2 ** 26) == _autotune.size_class(2 ** 25 + 1)
    assert _autotune.size_class(2 ** 26 + 1) != _autotune.size_class(2 ** 26)
