"""`auto`'s CUDA backend order comes from measurements: fastblocks/_auto_order.json is what
bench/auto_order.py generates from the committed results (no hand edits), and the generator
ranks backends by speed with any parity mismatch ranked last."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import fastblocks._backend as backend
from fastblocks import _auto_order

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("auto_order", ROOT / "bench" / "auto_order.py")
auto_order = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(auto_order)


def test_committed_order_is_generated_from_committed_results():
    assert auto_order.main(["--check"]) == 0, "run: python bench/auto_order.py"
    default, families, source = _auto_order.load()
    assert (backend.DEFAULT_CUDA_ORDER, backend.AUTO_CUDA_ORDER) == (default, families)
    data = json.loads(_auto_order.DATA.read_text())
    assert source == data["source"] == ("measured" if data["results"] else "prior")


def _write(tmp_path, device_type, rows, name="ops.json"):
    d = tmp_path / f"dev-{device_type}"
    d.mkdir(exist_ok=True)
    (d / name).write_text(json.dumps({"device": {"type": device_type}, "rows": rows}))


def _row(op, provider, us, shape="a", dtype="bf16", ok=True):
    return {"op": op, "shape_set": "s", "shape": shape, "batch": 32, "dtype": dtype,
            "layout": "nchw", "mode": "fwd", "provider": provider, "median_us": us,
            "parity_ok": ok}


def test_generator_ranks_by_speed_and_demotes_mismatches(tmp_path):
    assert auto_order.generate(tmp_path)["source"] == "prior"
    _write(tmp_path, "cpu", [_row("silu", "fastblocks:cuda", 1.0)])  # CPU results: ignored
    # unmeasured: only the per-family priors, marked as such
    assert {f: v["order"] for f, v in auto_order.generate(tmp_path)["families"].items()} == \
        {f: list(o) for f, o in auto_order.PRIOR_FAMILIES.items()}
    _write(tmp_path, "cuda", [
        _row("silu", "fastblocks:triton", 10.0), _row("silu", "fastblocks:cuda", 5.0),
        _row("silu", "fastblocks:triton", 8.0, shape="b"), _row("silu", "fastblocks:cuda", 4.0, shape="b"),
        _row("silu", "eager", 1.0),  # not a kernel backend: never in the order
        _row("depthwise_conv2d", "fastblocks:triton", 9.0),
        _row("depthwise_conv2d", "fastblocks:cuda", 3.0),
        _row("depthwise_conv2d", "fastblocks:cuda", 3.0, shape="b", ok=False),
        _row("depthwise_conv2d", "fastblocks:triton", 4.0, shape="b"),
    ])
    out = auto_order.generate(tmp_path)
    assert out["source"] == "measured"
    act = out["families"]["activation"]
    assert act["order"] == ["cuda", "triton"] and act["score_vs_fastest"]["triton"] == 2.0
    dw = out["families"]["depthwise"]
    assert dw["order"] == ["triton", "cuda"] and dw["parity_mismatch"] == ["cuda"]
    path = tmp_path / "order.json"
    assert auto_order.main(["--results", str(tmp_path), "--out", str(path)]) == 0
    default, families, source = _auto_order.load(path)
    assert families == {"activation": ("cuda", "triton"), "depthwise": ("triton", "cuda"),
                        "conv_bn_act": ("cuda", "triton")}
    assert source == "measured" and default == ("triton", "cuda")


def test_conv_family_prior_takes_cudnn_until_measured(tmp_path):
    """Unmeasured, the conv family's `auto` runs cuDNN's convolution + our epilogue (cuda)
    before the Triton implicit GEMM; a GPU result ranking triton first overrides the prior."""
    assert backend.AUTO_CUDA_ORDER.get("conv_bn_act") == ("cuda", "triton") or \
        json.loads(_auto_order.DATA.read_text())["source"] == "measured"
    _write(tmp_path, "cuda", [_row("conv_bn_act", "fastblocks:triton", 1.0),
                              _row("conv_bn_act", "fastblocks:cuda", 2.0)])
    fam = auto_order._family_of("conv_bn_act")
    assert fam == "conv_bn_act"
    out = auto_order.generate(tmp_path)["families"][fam]
    assert out["order"] == ["triton", "cuda"] and "source" not in out
