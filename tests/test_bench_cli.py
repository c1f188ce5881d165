"""The benchmark harness and the `fastblocks` command line, on CPU with tiny cases."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import fastblocks
from fastblocks import bench
from fastblocks.bench import harness
from fastblocks.bench.cases import REGISTRY
from fastblocks.bench.timing import Budget
from fastblocks.cli import main

TINY = Budget(cpu_warmup_s=0.001, cpu_rep_s=0.005, cpu_min_reps=3, cpu_max_reps=50)
HAS_CPU_KERNELS = fastblocks.why_unavailable("cpu", "cpu", "activation_forward") is None


def _tiny_run(**kw):
    cfg = bench.BenchConfig(ops=["hardswish"], shape_sets=["sweep"], quick=True, device="cpu",
                            providers=["eager", "fastblocks:triton", "fastblocks:cpu", "fastblocks:auto"],
                            budget=TINY, progress=False, **kw)
    return bench.run(cfg)


def test_harness_writes_json_and_png(tmp_path):
    results = _tiny_run(modes=["fwd", "fwd+bwd"], threads=1)  # 1 thread: robust on a busy host
    paths = bench.save(results, tmp_path, "ops-hardswish")
    data = json.loads(open(paths["json"]).read())  # valid JSON: no NaN, every value serializable

    assert paths["json"] == str(tmp_path / data["device"]["slug"] / "ops-hardswish.json")
    assert re.fullmatch(r"cpu-[a-z0-9-]+-\d+t", data["device"]["slug"])
    for key in ("schema", "created", "git", "versions", "device", "settings", "skipped", "rows"):
        assert key in data, key
    assert data["complete"] is True
    assert data["git"]["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", data["git"]["commit"])
    assert data["versions"]["torch"] == torch.__version__
    assert data["device"]["copy_bandwidth_gbps"] > 0
    assert data["settings"]["threads"] == 1 and data["device"]["threads"] == 1
    # triton is never timed on CPU tensors (interpreter), and the output says why
    assert any(s["provider"] == "fastblocks:triton" and "interpreter" in s["reason"] for s in data["skipped"])
    assert not any(r["provider"] == "fastblocks:triton" for r in data["rows"])

    rows = data["rows"]
    providers = {r["provider"] for r in rows}
    assert {"eager", "fastblocks:auto"} <= providers
    assert ("fastblocks:cpu" in providers) == HAS_CPU_KERNELS
    assert len(rows) == 2 * 2 * len(providers)  # 2 sizes x 2 modes x providers
    for r in rows:
        assert "error" not in r, r
        assert r["parity_ok"] is True, r
        for key in ("median_us", "p20_us", "p80_us", "gbps", "pct_copy_bw", "speedup_vs_eager"):
            assert r[key] > 0 and math.isfinite(r[key]), (key, r)
        assert r["p20_us"] <= r["median_us"] <= r["p80_us"]
        numel, es = r["params"]["numel"], 4
        assert r["bytes"] == (2 if r["mode"] == "fwd" else 5) * numel * es
        assert r["tflops"] is None and r["peak_mem_bytes"] is None
        if r["provider"] == "eager":
            assert r["speedup_vs_eager"] == 1.0
    auto = [r for r in rows if r["provider"] == "fastblocks:auto"]
    assert all(r["backend"] == ("cpu" if HAS_CPU_KERNELS else "torch") for r in auto)

    assert len(paths["png"]) == 1
    with open(paths["png"][0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = bench.format_table(data)
    assert "x eager" in table and "2^16" in table and "skipped fastblocks:triton" in table


def test_derived_columns():
    rows = [{"op": "o", "shape_set": "s", "shape": "a", "dtype": "fp32", "layout": "nchw", "mode": "fwd",
             "provider": p, "median_us": us, "bytes": 2_000_000, "flops": 4_000_000}
            for p, us in (("eager", 10.0), ("compile", 5.0), ("fastblocks:cpu", 2.0))]
    harness._derive(rows, copy_gbps=400.0)
    fb = rows[2]
    assert fb["gbps"] == pytest.approx(1000.0)             # 2 MB in 2 µs
    assert fb["pct_copy_bw"] == pytest.approx(250.0)
    assert fb["tflops"] == pytest.approx(2.0)
    assert fb["speedup_vs_eager"] == pytest.approx(5.0)
    assert fb["speedup_vs_compile"] == pytest.approx(2.5)


def test_depthwise_bytes_and_flops():
    op = REGISTRY["depthwise_conv2d"]
    if op.missing():
        pytest.skip(op.missing())
    shape = op.shapes("mobilenet_v2", "cpu", [2], False)[1]  # 96 x 112^2, k3 s2 -> 56^2
    assert shape.params["C"] == 96 and shape.params["stride"] == 2
    fwd = op.case(shape, torch.float16, "nchw", "fwd", torch.device("cpu"))
    both = op.case(shape, torch.float16, "nchw", "fwd+bwd", torch.device("cpu"))
    x, w, b, y = 2 * 96 * 112 * 112, 96 * 9, 96, 2 * 96 * 56 * 56
    assert fwd.bytes == (x + w + b + y) * 2
    assert both.bytes == fwd.bytes + (y + x + w + x + w + b) * 2
    assert fwd.flops == 2 * 2 * 96 * 56 * 56 * 9 and both.flops == 3 * fwd.flops


def test_shapes_tables():
    from fastblocks.bench import shapes as S
    for net in S.DEPTHWISE_NETS.values():
        keys = [(l.channels, l.size, l.kernel, l.stride) for l in net]
        assert len(keys) == len(set(keys)), "deduplicated within a network"
        for l in net:
            assert l.kernel in (3, 5) and l.stride in (1, 2) and l.size in (112, 56, 28, 14, 7)
    all_keys = [(l.channels, l.size, l.kernel, l.stride) for l in S.DEPTHWISE_ALL]
    assert len(all_keys) == len(set(all_keys))
    assert set(S.DEPTHWISE_REPRESENTATIVE) <= set(S.DEPTHWISE_ALL) | {
        l for net in S.DEPTHWISE_NETS.values() for l in net}


def test_parity_mismatch_is_reported():
    """A wrong 'fast' function must show up as a mismatch, not as a speed-up."""
    op = REGISTRY["relu6"]
    case = op.case(op.shapes("sweep", "cpu", [1], True)[0], torch.float32, "nchw", "fwd", torch.device("cpu"))
    case.fast = lambda x: torch.nn.functional.relu6(x) * 1.001
    row = harness.time_one(case, "fastblocks:torch", TINY)
    assert row["parity_ok"] is False and row["max_abs_err"] > 1e-3
    assert "forward" in row["parity_error"]


def test_cli_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for section in ("versions", "torch", "triton", "device", "CPU", "backends for cpu tensors",
                    "backends for cuda tensors", "auto picks", "activation"):
        assert section in out, section
    for name in fastblocks.BACKENDS:
        assert re.search(rf"^\s+{name}\s+(available|unavailable: \S)", out, re.M), name


def test_cli_bench_list(capsys):
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out
    assert "sweep" in out and "mobilenet_v2" in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "ops", "--op", "nope"], "unknown op 'nope'"),
    (["bench", "ops", "--op", "hardswish", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["bench", "ops", "--op", "hardswish", "--providers", "tensorrt"], "unknown provider 'tensorrt'"),
    (["bench", "ops", "--op", "hardswish", "--shapes", "resnet"], "unknown shape set"),
    (["bench", "ops", "--op", "hardswish", "--batch", "0"], "positive integer"),
    (["bench", "ops"], "--op"),
    (["verify", "--op", "nope"], "unknown op 'nope'"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_cli_bench_ops_end_to_end(tmp_path, capsys):
    rc = main(["bench", "ops", "--op", "relu6", "--shapes", "sweep", "--quick", "--providers", "eager,auto",
               "--out", str(tmp_path), "--name", "t", "--no-progress", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    json_path = re.search(r"^results: (.+\.json)$", out, re.M).group(1)
    png_path = re.search(r"^plot:\s+(.+\.png)$", out, re.M).group(1)
    assert os.path.exists(json_path) and os.path.exists(png_path)
    data = json.loads(open(json_path).read())
    assert data["command"].startswith("fastblocks bench ops --op relu6")
    assert {r["provider"] for r in data["rows"]} == {"eager", "fastblocks:auto"}
    assert "fastblocks:auto" in out and "GB/s" in out


@pytest.mark.skipif(not HAS_CPU_KERNELS, reason="fastblocks._C CPU kernels not built")
def test_cli_verify_passes_and_fails(capsys, monkeypatch):
    assert main(["verify", "--op", "hardsigmoid", "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"hardsigmoid\s+cpu\s+cpu\s+fp32\s+pass", out)
    assert "0 failed" in out
    # a wrong op must fail verify with exit code 1
    monkeypatch.setattr(fastblocks.ops, "hardsigmoid", lambda x: torch.nn.functional.hardsigmoid(x) + 1e-3)
    assert main(["verify", "--op", "hardsigmoid", "--backend", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "forward" in out


def test_cli_demo_ops_subprocess():
    """`python -m fastblocks.cli demo --ops` runs end to end on this device: the photograph
    classified eager and optimized, then the per-op table with its verdict."""
    proc = subprocess.run([sys.executable, "-m", "fastblocks.cli", "demo", "--no-speed", "--ops"],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1 = a parity mismatch, reported
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "device" in out and "torch" in out
    for name in ("hardswish", "hardsigmoid", "relu6", "silu", "depthwise_conv2d"):
        assert name in out, name
    assert "grace_hopper.jpg" in out and "top-5 identical" in out
    verdict = [line for line in out.splitlines() if line.startswith("verdict:")]
    assert len(verdict) == 2 and "ops match eager" in verdict[0], verdict
    assert "gives eager's answer" in verdict[1]
    if proc.returncode == 1:
        assert "MISMATCH" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the re-run applies to CPU benchmarks")
def test_cli_bench_cpu_reruns_with_reused_memory(tmp_path):
    """From the command line a CPU benchmark re-runs itself with glibc keeping freed memory
    (no first-touch page faults per call), records it, and --system-malloc opts out."""
    base = [sys.executable, "-m", "fastblocks.cli", "bench", "ops", "--op", "relu6", "--shapes", "sweep",
            "--quick", "--providers", "eager", "--out", str(tmp_path), "--no-progress", "--no-plot",
            "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    for extra, reuses in (([], True), (["--system-malloc"], False)):
        proc = subprocess.run(base + ["--name", f"m{int(reuses)}"] + extra, capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        path = re.search(r"^results: (.+\.json)$", proc.stdout, re.M).group(1)
        data = json.loads(open(path).read())
        assert data["device"]["malloc"]["reuses_freed_memory"] is reuses
        assert ("page-faults on first touch" in proc.stdout) is (not reuses)


@pytest.mark.parametrize("dtype", (torch.float16, torch.float32))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_float64_reference_by_chunks_of_images(monkeypatch, layout, dtype):
    """The harness's float64 reference of a large case, a few images at a time (x's gradient
    concatenated, weight and bias gradients summed), equals the whole-batch one. float32 keeps
    only the summed gradients (its check needs no more), whole or chunked."""
    op = REGISTRY["depthwise_conv2d"]
    shape = op.shapes("representative", "cpu", [5], False)[0]
    case = op.case(shape, dtype, layout, "fwd+bwd", torch.device("cpu"))
    inp = harness._prepare_sets(case, 1)[0]
    whole = harness._reference(case, inp)[2]()
    x = inp.args[0]
    monkeypatch.setattr(harness, "HI_CHUNK_BYTES", 2 * x[0].numel() * 8)  # 2 images a chunk
    chunked = harness._reference(case, inp)[2]()
    x_grad = [case.grad_idx[j] == case.arg_names.index("x") for j in range(len(whole[1]))]
    assert any(x_grad) and not all(x_grad)
    if dtype == torch.float32:
        assert whole[0] is None and chunked[0] is None
        assert all((g is None) == bx for gs in (whole[1], chunked[1]) for g, bx in zip(gs, x_grad))
    else:
        assert chunked[0].shape == whole[0].shape and chunked[0].dtype == torch.float64
        torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=0)
    for got, exp in zip(chunked[1], whole[1]):
        if got is None:
            continue
        assert got.shape == exp.shape and got.dtype == torch.float64
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_cli_verify_conv_bn_act_fp16_training_gradients(capsys, backend):
    """The fp16 training fuzz of conv_bn_act (a silu chain's bn_bias gradient failed the 2x
    rule while the kernels rounded the BN-output gradient to fp16 before summing it), and the
    interpreter's bf16 reported as skipped, not as a failure."""
    assert main(["verify", "--op", "conv_bn_act", "--backend", backend,
                 "--dtype", "float16"]) == 0, capsys.readouterr().out
    if backend == "triton":
        capsys.readouterr()
        assert main(["verify", "--op", "conv_bn_act", "--backend", "triton",
                     "--dtype", "bfloat16"]) == 0
        assert "no bfloat16 arithmetic" in capsys.readouterr().out
