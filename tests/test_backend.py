"""Backend selection: names, context nesting, availability errors, auto's choice."""
import threading

import pytest
import torch

import fastblocks
from fastblocks import ops


def test_set_and_context():
    assert fastblocks.get_backend() == "auto"
    with fastblocks.backend("torch"):
        assert fastblocks.get_backend() == "torch"
        with fastblocks.backend("cpu"):
            assert fastblocks.get_backend() == "cpu"
        assert fastblocks.get_backend() == "torch"
    assert fastblocks.get_backend() == "auto"
    fastblocks.set_backend("torch")
    try:
        assert fastblocks.get_backend() == "torch"
    finally:
        fastblocks.set_backend("auto")


def test_selection_is_per_thread():
    seen = []
    with fastblocks.backend("torch"):
        t = threading.Thread(target=lambda: seen.append(fastblocks.get_backend()))
        t.start()
        t.join()
    assert seen == ["auto"]


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'numba'"):
        fastblocks.set_backend("numba")
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastblocks.backend("gpu"):
            pass


def test_available_backends_cpu():
    avail = fastblocks.available_backends("cpu")
    assert {"auto", "torch", "cpu"} <= set(avail), fastblocks.why_unavailable("cpu", "cpu")
    assert "cuda" not in avail
    assert "CUDA tensors" in fastblocks.why_unavailable("cuda", "cpu")


def test_unavailable_backend_names_what_is_missing():
    x = torch.randn(4)
    with fastblocks.backend("cuda"):
        with pytest.raises(fastblocks.BackendUnavailableError,
                           match=r"'cuda' cannot run activation here: .*CUDA tensors"):
            ops.hardswish(x)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in fastblocks.why_unavailable("triton", "cpu")
    with fastblocks.backend("triton"):
        with pytest.raises(fastblocks.BackendUnavailableError, match="TRITON_INTERPRET=1"):
            ops.silu(torch.randn(4))


def test_auto_picks_cpu_kernels_on_cpu(monkeypatch):
    calls = []
    real = torch.ops.fastblocks_C.activation_forward

    class Spy:
        def __call__(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setattr(torch.ops.fastblocks_C, "activation_forward", Spy())
    ops.relu6(torch.randn(5))
    assert len(calls) == 1


def test_auto_falls_back_to_torch_with_warning(monkeypatch):
    from fastblocks import _backend

    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setattr(_backend.fastblocks._extension if hasattr(_backend, "fastblocks") else
                        _backend._extension, "C_ERROR", "pretend the extension is missing")
    with pytest.warns(RuntimeWarning, match="pretend the extension is missing.*eager torch reference"):
        out = ops.hardswish(torch.randn(6))
    assert out.shape == (6,)


def test_backward_runs_on_the_backend_selected_at_forward(monkeypatch):
    """The autograd engine may run backward on another thread (always for CUDA tensors), which
    does not see the caller's context; the op must carry its backend over. Forced here by
    running backward in a fresh thread with `auto` in effect."""
    from fastblocks.ops import _dispatch

    used = []
    real = _dispatch.resolve

    def spy(family, device, c_op=None):
        used.append((c_op, fastblocks.get_backend()))
        return real(family, device, c_op)

    monkeypatch.setattr(_dispatch, "resolve", spy)
    x = torch.randn(8, requires_grad=True)
    with fastblocks.backend("torch"):
        y = ops.hardswish(x)
    t = threading.Thread(target=lambda: y.sum().backward())
    t.start()
    t.join()
    assert used == [("activation_forward", "torch"), ("activation_backward", "torch")]
    assert x.grad is not None


def test_registered_op_only_when_more_than_plain_eager(monkeypatch):
    """Plain eager inference calls the kernels and plain eager training an autograd.Function
    around them; fake tensors and tracing go through the registered op. All give one result,
    and a second derivative raises on both paths instead of coming out silently wrong."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastblocks.ops import activation as act_mod

    calls = []
    real = act_mod._activation_op
    monkeypatch.setattr(act_mod, "_activation_op", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 5)
    direct = ops.silu(x)
    with torch.no_grad():
        ops.silu(x.requires_grad_())
    trained = ops.silu(x)  # requires grad now
    assert calls == [] and type(trained.grad_fn).__name__ == "ActivationFunctionBackward"
    via_op = real(x, 5)
    assert via_op.grad_fn is not None
    for y in (direct, trained, via_op):
        torch.testing.assert_close(y.detach(), direct, rtol=0, atol=0)
    (g_direct,) = torch.autograd.grad(trained.sum(), x)
    (g_op,) = torch.autograd.grad(via_op.sum(), x)
    torch.testing.assert_close(g_direct, g_op, rtol=0, atol=0)
    for y in (ops.silu(x), real(x, 5)):
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        with pytest.raises(RuntimeError):
            g.sum().backward()
    with FakeTensorMode() as mode:
        fake = ops.silu(mode.from_tensor(torch.randn(2, 3)))
    assert calls == [1] and type(fake).__name__ == "FakeTensor"
