"""The zoo's per-architecture contract (DESIGN.md, test contract; issues 14 and 18), shared by
the zoo test files: the model builds, runs forward at a small resolution and backward with no
NaN, and its fused form (fastblocks.optimize of the same weights) equals the plain model in
eval and in train mode, outputs and every parameter gradient (fastblocks.model_parity)."""
from __future__ import annotations

import copy

import torch
from torch.utils._pytree import tree_flatten

import fastblocks
from fastblocks.model_parity import check_model


def check_architecture(name: str, size: int, batch: int = 2, **kwargs) -> None:
    torch.manual_seed(0)
    model = fastblocks.create_model(name, fused=False, **kwargs)
    c = fastblocks.models.model_info(name).input_size[0]
    x = torch.randn(batch, c, size, size)
    outs = [t for t in tree_flatten(model(x))[0] if isinstance(t, torch.Tensor)]
    assert outs and all(torch.isfinite(t).all() for t in outs), f"{name}: non-finite output"
    fused = fastblocks.optimize(copy.deepcopy(model))
    assert list(fused.state_dict()) == list(model.state_dict()), f"{name}: state_dict keys changed"
    for mode in ("eval", "train"):
        res = check_model(model, fused, lambda: x, mode=mode)
        bad = [f"{r.what}: {r.message}" for r in res.rows if not r.ok]
        assert not bad, f"{name} {mode}: " + "; ".join(bad[:5])
        grads = [r for r in res.rows if r.what.startswith("grad")]
        assert grads and all(r.max_abs == r.max_abs for r in grads), f"{name} {mode}: NaN gradient"


def param_count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        model = fastblocks.create_model(name, fused=False, **kwargs)
    return sum(p.numel() for p in model.parameters())
