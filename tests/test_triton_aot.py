"""Every Triton kernel the ops launch compiles for sm_90 (Hopper) on a CPU-only machine:
bench/triton_aot_check.py records the launches the ops make under the interpreter and lowers
each through Triton's own compiler and ptxas, which the interpreter never does (no GPU
needed). Here: one specialization per kernel, bf16 (the dtype the interpreter cannot run at
all), the prior config. The whole set (every op case, fp32/fp16/bf16, every autotune config)
is the script's full run, for bench/gpu_session.sh or by hand."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "triton_aot_check.py"
# the 19 kernels the ops launch; a new kernel must join this list (and the script's cases)
KERNELS = {
    "activation._activation_forward_kernel", "activation._activation_backward_kernel",
    "depthwise._dw_fwd_nchw_kernel", "depthwise._dw_fwd_nhwc_kernel",
    "depthwise._dw_bwd_in_nchw_kernel", "depthwise._dw_bwd_in_nhwc_kernel",
    "depthwise._dw_bwd_w_nchw_kernel", "depthwise._dw_bwd_w_nhwc_kernel",
    "squeeze_excite._reduce_nchw_kernel", "squeeze_excite._reduce_nhwc_kernel",
    "squeeze_excite._scale_kernel",
    "shuffle._shuffle_forward_kernel", "shuffle._shuffle_backward_kernel",
    "grouped_conv._gconv1x1_kernel",
    "conv_bn_act._stats_kernel", "conv_bn_act._normalize_kernel",
    "conv_bn_act._grad_sums_kernel", "conv_bn_act._grad_z_kernel",
    "conv_gemm._conv_gemm_kernel",
}


def test_every_kernel_compiles_for_sm90_in_bf16(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--one-per-kernel",
                           "--dtypes", "bfloat16", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["summary"]) == KERNELS, sorted(set(report["summary"]) ^ KERNELS)
    for r in report["results"]:
        assert r["ok"], f"{r['kernel']}: {r['error']}"
        assert r["shared"] <= 232448 and r["reg"] > 0, r
