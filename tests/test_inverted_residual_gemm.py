"""The fused inverted residual's 1x1 convs (csrc/include/fastblocks/pointwise_cpu_gemm.h: the
register-blocked GEMM with bias + activation or bias + residual in registers) against eager, on
the shapes that reach its edges: channel counts that leave a partial vector (N tails) or an odd
number of vectors (the 3-vector panel), position counts that leave a partial tile (M tails), every
expand activation, biases absent, K from 3 to 200; in-process (this CPU's ISA) and with the
narrower ISAs forced in a fresh interpreter."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastblocks.ops import inverted_residual
from fastblocks.ops._activation_codes import activation_code
from fastblocks.ops.inverted_residual import _impl, pack_pointwise
from test_inverted_residual import _HAS_KERNEL, _block, _reference
from tolerances import assert_parity

# (N, C_in, C_h, C_out, H, W, stride, residual, expand act, biases), kernel 3, padding 1.
# Vectors of 8 (AVX2) / 16 (AVX-512: N a multiple of 16, >= 32) / 4 (SSE2) floats; tiles of 4-12
# positions.
GEMM_CASES = [
    # C_h 40: panels of 2 + 3 vectors (AVX2); C_out 20: a 3-vector panel with 4 columns unused;
    # 63 positions: a partial tile
    (1, 8, 40, 20, 9, 7, 1, False, "hardswish", True),
    # no biases; C_out = C_in 12: 1.5 vectors (AVX2), residual added through the column tail
    (1, 12, 72, 12, 7, 9, 1, True, None, False),
    # project K = 200 (25 vectors of C_h: panels of 2 and a last of 3), whole-image groups
    (2, 8, 200, 8, 5, 5, 1, True, "relu", True),
    # expand K = 3; C_out 5: less than one vector (1-vector panel, partial)
    (1, 3, 16, 5, 6, 6, 2, False, "silu", True),
    # C_out 24 = one 3-vector panel (AVX2) with no tail; bands of a 20x20 map
    (1, 24, 48, 24, 20, 20, 1, True, "hardsigmoid", True),
    # C_h 96, C_out 32: the AVX-512 kernel on an AVX-512 CPU (N a multiple of 16, >= 32)
    (1, 32, 96, 32, 7, 9, 1, True, "relu6", True),
    # K > 1024: MKL + the separate epilogue pass (kMaxGemmK), project then expand
    (1, 8, 1040, 8, 3, 3, 1, True, "relu6", True),
    (1, 1040, 16, 8, 3, 3, 1, False, "silu", True),
    # C_h 8 = one vector (AVX2), relu6 with a residual and no project bias
    (2, 8, 8, 8, 6, 7, 1, True, "relu6", False),
]


def check_gemm_case(case):
    n, cin, ch, cout, h, w, s, res, ea, biases = case
    t = _block(n, cin, ch, cout, h, w, 3, True, seed=cin + ch)
    if not biases:
        t["b_expand"] = t["b_project"] = None
    out = inverted_residual(**t, stride=s, padding=1, expand_activation=ea,
                            dw_activation="relu6", residual=res)
    # fp32 output, no reduction argument: the rule compares with eager alone (a float64 reference
    # would go unused, and eager's float64 depthwise conv of 1040 channels takes 12 s)
    assert_parity(out, _reference(t, s, 1, 1, ea, "relu6", res))
    # on weights packed beforehand (pack_pointwise, what optimize() caches): the same kernel on
    # the same panels, so the same bits
    packed = (pack_pointwise(t["w_expand"], t["b_expand"]),
              pack_pointwise(t["w_project"], t["b_project"]))
    args = (t["x"], t["w_expand"], t["b_expand"], t["w_dw"], t["b_dw"], t["w_project"],
            t["b_project"], [s, s], [1, 1], [1, 1], activation_code(ea), 2, res)
    assert torch.equal(_impl(*args, *packed), out)


@pytest.mark.skipif(not _HAS_KERNEL, reason="fastblocks._C without inverted_residual_forward")
@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: f"ci{c[1]}ch{c[2]}co{c[3]}-{c[8]}")
def test_pointwise_gemm_edges(case):
    check_gemm_case(case)


@pytest.mark.skipif(not _HAS_KERNEL, reason="fastblocks._C without inverted_residual_forward")
def test_pointwise_gemm_narrower_isas():
    """The GEMM is compiled for AVX-512, AVX2 and SSE2; FASTBLOCKS_CPU_ISA forces a narrower one
    (the depthwise family's switch), one fresh interpreter per ISA, run side by side (each is
    mostly `import torch`: 12 s on the loaded 2-core dev VM). AVX2 only where this process ran
    AVX-512: elsewhere test_pointwise_gemm_edges ran it."""
    isas = ["sse2"] + (["avx2"] if torch.backends.cpu.get_cpu_capability() == "AVX512" else [])
    script = ("import test_inverted_residual_gemm as t\n"
              "for case in t.GEMM_CASES:\n"
              "    t.check_gemm_case(case)\n")
    runs = {isa: subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(__file__),
                                  env=dict(os.environ, FASTBLOCKS_CPU_ISA=isa),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for isa in isas}
    for isa, run in runs.items():
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, f"{isa}: {err[-4000:]}"


@pytest.mark.skipif(not _HAS_KERNEL, reason="fastblocks._C without inverted_residual_forward")
def test_packed_weight_of_another_shape_raises():
    """A packed copy is checked against the weight it stands for: one packed for the project
    weight passed as the expand one raises rather than reading past its end."""
    t = _block(1, 8, 32, 16, 6, 6, 3, True)
    wrong = pack_pointwise(t["w_project"], t["b_project"])
    with pytest.raises(RuntimeError, match="pointwise_pack's output for a \\(32, 8\\) weight"):
        _impl(t["x"], t["w_expand"], t["b_expand"], t["w_dw"], t["b_dw"], t["w_project"],
              t["b_project"], [1, 1], [1, 1], [1, 1], 2, 2, False, wrong, None)
