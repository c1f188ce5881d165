"""The model commands of the CLI: `verify MODEL`, `bench models`, `profile`, `list`, on a tiny
model of the tests' own (given as package.module:factory) and on zoo models."""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import fastblocks
from fastblocks.cli import main


def make_tiny() -> nn.Module:
    """A user's own model: conv-BN-ReLU6, depthwise-BN-hardswish, pool, dropout, linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 10))


TINY = f"{__name__}:make_tiny"


def test_verify_model_passes(capsys):
    assert main(["verify", TINY, "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "eval" in out and "train" in out and "parameter gradients" in out
    assert "verdict: PASS" in out


def test_verify_model_fails_on_a_wrong_kernel(capsys, monkeypatch):
    """A fault in a swapped kernel makes `verify MODEL` exit 1 and name the mismatch."""
    real = fastblocks.ops.conv_bias_act
    monkeypatch.setattr(fastblocks.ops, "conv_bias_act", lambda x, *a, **k: real(x, *a, **k) * 1.01)
    rc = main(["verify", TINY, "--size", "16", "--mode", "eval"])
    out = capsys.readouterr().out
    assert rc == 1 and "MISMATCH" in out and "FAIL" in out


def test_verify_bad_model_name_exits_2(capsys):
    assert main(["verify", "mobilenet_v9"]) == 2
    assert "unknown model 'mobilenet_v9'" in capsys.readouterr().err


def test_bench_models_checks_every_name_of_a_list(capsys):
    assert main(["bench", "models", "--model", f"{TINY},mobilenet_v9"]) == 2
    assert "unknown model 'mobilenet_v9'" in capsys.readouterr().err


def test_bench_models_writes_json_and_png(tmp_path, capsys):
    rc = main(["bench", "models", "--model", TINY, "--size", "16", "--batch", "2", "--quick",
               "--providers", "eager,fastblocks", "--out", str(tmp_path), "--no-progress",
               "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "(1 thread)" in out  # not "(1 threads)"
    assert "fastblocks swapped: 1 conv -> BN -> relu6, 1 depthwise conv -> BN -> hardswish" in out
    path = re.search(r"^results: (.+\.json)$", out, re.M).group(1)
    data = json.loads(open(path).read())
    rows = {r["provider"]: r for r in data["rows"]}
    assert set(rows) == {"eager", "fastblocks"}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["p90_ms"] >= r["median_ms"] > 0
        assert r["peak_bytes"] is None or r["peak_bytes"] >= 0
    assert rows["eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    assert path.endswith(".json") and (tmp_path / data["device"]["slug"]).is_dir()
    assert any(p.suffix == ".png" for p in (tmp_path / data["device"]["slug"]).iterdir())


def test_profile_table(tmp_path, capsys):
    rc = main(["profile", TINY, "--size", "16", "--depth", "1", "--reps", "2",
               "--out", str(tmp_path), "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    # every block of the model in call order, with FLOPs where a conv runs
    lines = [ln for ln in out.splitlines() if re.match(r"^\d+\s", ln)]
    assert [ln.split()[0] for ln in lines] == [str(i) for i in range(10)]
    assert "kFLOP" in lines[0] and "whole forward" in out
    assert list(tmp_path.rglob("profile-*.png"))
    # served by: the report's pattern names, not internal classes
    assert lines[0].endswith("conv -> BN -> relu6") and lines[3].endswith("depthwise conv -> BN -> hardswish")
    assert lines[1].endswith("fused into an earlier block's swap")
    assert not re.search(r"FusedInto|ConvBNActHead", out)


def test_profile_warns_on_noisy_blocks(capsys, monkeypatch):
    """A block whose reps spread over 25% (IQR / median) gets a warning: its ratio is noise."""
    from fastblocks.bench import profile
    assert profile.spread([1.0, 1.0, 1.0, 1.0]) == 0 and profile.spread([1.0, 2.0]) == 0
    assert profile.spread([1.0, 1.0, 2.0, 3.0, 3.0]) > 0.25
    monkeypatch.setattr(profile, "spread", lambda samples: 0.5)
    assert main(["profile", TINY, "--size", "8", "--depth", "1", "--reps", "2", "--no-plot",
                 "--threads", "1"]) == 0
    assert "warning: noisy timing: 10 of 10 blocks" in capsys.readouterr().out


def test_list_models_with_params_flops_and_fused_ops(capsys):
    assert main(["list", "mobilenet_v2"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("mobilenet_v2 "))
    cells = row.split()
    assert cells[1] == "3.50M" and cells[2] == "0.60" and cells[3] == "224x224"  # torchvision: 3.5M, 0.30 GMACs
    assert "conv_bn_act x35" in row and "depthwise_conv2d x17" in row


def test_bench_models_takes_comma_separated_names(tmp_path, capsys):
    rc = main(["bench", "models", "--model", f"lenet5,{TINY}", "--size", "32", "--batch", "1",
               "--quick", "--providers", "eager", "--out", str(tmp_path), "--no-progress",
               "--no-plot", "--threads", "1", "--name", "sweep"])
    assert rc == 0
    paths = re.findall(r"^results: (.+\.json)$", capsys.readouterr().out, re.M)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["sweep-lenet5.json",
                                                    f"sweep-{TINY.replace(':', '-')}.json"]
    assert main(["bench", "models", "--model", "lenet5,mobilenet_v9", "--providers", "eager"]) == 2
    assert "unknown model 'mobilenet_v9'" in capsys.readouterr().err


def make_tiny_quiet() -> nn.Module:
    """make_tiny with outputs near 1e-9, as a random-init deep net's in eval mode."""
    model = make_tiny()
    with torch.no_grad():
        model[-1].weight.mul_(1e-8)
        model[-1].bias.mul_(1e-8)
    return model


def test_verify_model_sees_a_fault_in_tiny_eval_outputs(capsys, monkeypatch):
    """x1.5 in one swapped kernel: the eval output row says MISMATCH although the outputs'
    error (~1e-9) is far under assert_close's atol (1e-5)."""
    real = fastblocks.ops.conv_bias_act
    monkeypatch.setattr(fastblocks.ops, "conv_bias_act", lambda x, *a, **k: real(x, *a, **k) * 1.5)
    rc = main(["verify", f"{__name__}:make_tiny_quiet", "--size", "16", "--mode", "eval"])
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("eval  output 0"))
    assert rc == 1 and row.endswith("MISMATCH"), out


def test_unknown_op_suggests_close_names(capsys):
    """A typo gets the model-name error's "did you mean" (one helper), not the whole list."""
    assert main(["bench", "ops", "--op", "hardswsh"]) == 2
    err = capsys.readouterr().err
    assert "unknown op 'hardswsh'; did you mean hardswish" in err and "registered ops" not in err


def test_report_summary_shows_nesting_and_one_note_per_block():
    """mobilenet_v2's inverted residuals hold the conv -> BN runs also counted: the summary
    lists those apart; an untraceable block fused by a probe gets one note, not two."""
    import sys
    from pathlib import Path

    from fastblocks.optimize._report import Report
    r = Report()
    for path in ("features.1", "features.2"):
        r.swap("inverted residual (expand -> depthwise -> project)", path)
        r.swap("conv -> BN -> relu6", f"{path}.conv.0")
    r.swap("conv -> BN -> relu6", "features.0")
    assert r.summary() == ("2 inverted residual (expand -> depthwise -> project), 1 conv -> BN -> "
                           "relu6; inside those: 2 conv -> BN -> relu6")
    assert "(2 of them inside other swapped blocks)" in str(r)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_optimize import user_model  # holds Untraceable, fused after a probe
    notes = fastblocks.optimize(user_model()).fastblocks_report.notes
    about = [n for n in notes if "Untraceable" in n]
    assert len(about) == 1 and "module by module" in about[0] and "probe" in about[0], notes


def make_nothing_to_swap() -> nn.Module:
    """No pattern fastblocks swaps (like a model in a dtype its kernels lack)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


def test_bench_models_warns_when_nothing_was_swapped(tmp_path, capsys):
    """optimize() swapped nothing, so the fastblocks row times eager: say so."""
    rc = main(["bench", "models", "--model", f"{__name__}:make_nothing_to_swap", "--size", "8",
               "--batch", "2", "--quick", "--providers", "eager,fastblocks", "--out", str(tmp_path),
               "--no-progress", "--threads", "1", "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0 and "fastblocks swapped: nothing" in out
    assert "warning: optimize() swapped nothing" in out
