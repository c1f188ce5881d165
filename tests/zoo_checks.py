"""The zoo's per-architecture contract (DESIGN.md, test contract; issues 14 and 18), shared by
the zoo test files: the model builds, runs forward at a small resolution and backward with no
NaN, and its fused form (fastblocks.optimize of the same weights) equals the plain model in
eval and in train mode, outputs and every parameter gradient.

The full comparison (both modes, every gradient) runs in float64, at assert_close's float64
defaults: there rounding is ~1e-16 and any fault of the swap logic (a fold, a BN update, a
missed activation) shows. In float32 the eval outputs are checked by fastblocks.testing's
rule (model_parity). float32 *gradients* of a deep net are not compared model-wide: two
equally exact float32 computations (BN folded into the conv, or not) drift apart through
100+ layers of backward (ResNet-110: BN-bias gradients 1e-5 relative apart, each side within
2-4x of the other's error against float64), so only a bound wider than the contract's would
pass, and the per-op tests already hold every kernel's gradients to the contract."""
from __future__ import annotations

import copy

import torch
from torch.utils._pytree import tree_flatten

import fastblocks
from fastblocks.model_parity import check_model


def check_architecture(name: str, size: int, batch: int = 2, float64: bool = True, **kwargs) -> None:
    """``float64=False`` skips the float64 comparison (train and eval, every gradient) for
    nets whose float64 run costs a minute on CI's CPU (VGG's 100M-parameter head) and whose
    blocks a sibling configuration already covers in float64; the float32 eval comparison,
    a backward and the NaN checks still run."""
    torch.manual_seed(0)
    model = fastblocks.create_model(name, fused=False, **kwargs)
    c = fastblocks.models.model_info(name).input_size[0]
    x = torch.randn(batch, c, size, size)
    outs = [t for t in tree_flatten(model(x))[0] if isinstance(t, torch.Tensor)]
    assert outs and all(torch.isfinite(t).all() for t in outs), f"{name}: non-finite output"
    fused = fastblocks.optimize(copy.deepcopy(model))
    assert list(fused.state_dict()) == list(model.state_dict()), f"{name}: state_dict keys changed"
    res = check_model(model, fused, lambda: x, mode="eval", backward=False)
    bad = [f"{r.what}: {r.message}" for r in res.rows if not r.ok]
    assert not bad, f"{name} float32 eval: " + "; ".join(bad[:5])
    if not float64:
        model.train()
        sum(t.sum() for t in tree_flatten(model(x))[0] if isinstance(t, torch.Tensor)).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), f"{name}: gradients"
        return
    model64, fused64 = model.double(), fused.double()
    for mode in ("eval", "train"):
        res = check_model(model64, fused64, lambda: x.double(), mode=mode)
        bad = [f"{r.what}: {r.message}" for r in res.rows if not r.ok]
        assert not bad, f"{name} float64 {mode}: " + "; ".join(bad[:5])
        grads = [r for r in res.rows if r.what.startswith("grad")]
        assert grads and all(r.max_abs == r.max_abs for r in grads), f"{name} {mode}: NaN gradient"


def param_count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        model = fastblocks.create_model(name, fused=False, **kwargs)
    return sum(p.numel() for p in model.parameters())
