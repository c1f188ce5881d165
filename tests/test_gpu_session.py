"""bench/gpu_session.sh end to end without a GPU (--dry-run): every stage is named with what it
would run and skipped, the budgets fit the 9-minute device call, and the session record,
archive and copy are written. The GPU stages themselves run only on a lent GPU machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
STAGES = ["build", "test", "memcheck", "racecheck", "quick", "models"]


def _run(tmp_path, *args):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable,
               RESULTS_ROOT=str(tmp_path / "results"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_dry_run_end_to_end(tmp_path):
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    sessions = list(out.glob("results/*/gpu-session/session.json"))
    assert len(sessions) == 1, list(out.rglob("*"))
    rec = json.loads(sessions[0].read_text())
    assert rec["dry_run"] is True
    assert [s["stage"] for s in rec["stages"]] == STAGES
    for s in rec["stages"]:
        assert s["status"] in ("dry-run", "skipped"), s
        if s["status"] == "dry-run":
            assert f"{s['stage']}: skipped (dry run" in r.stdout
    # the stage budgets leave room in the device tool's 600 s per command
    assert sum(s["budget_s"] for s in rec["stages"]) <= rec["session_budget_s"] <= 540
    slug = rec["device"]
    copied = tmp_path / "results" / slug / "gpu-session"
    assert (copied / "session.json").is_file() and (copied / "summary.txt").is_file()
    with tarfile.open(out / "session.tar.gz") as tar:
        assert f"{slug}/gpu-session/session.json" in tar.getnames()
    assert (out / "summary.txt").read_text() == (copied / "summary.txt").read_text()
    # the quick stage tunes the Triton kernels and logs it; the record exists even when empty
    assert "would run: env FASTBLOCKS_AUTOTUNE=tune FASTBLOCKS_AUTOTUNE_BUDGET_S=45" in r.stdout
    assert json.loads((copied / "autotune-quick.json").read_text())["tunings"] == 0


def test_unknown_stage_and_missing_gpu(tmp_path):
    r = _run(tmp_path, "--dry-run", "nosuchstage")
    assert r.returncode == 2 and "unknown stage 'nosuchstage'" in r.stderr
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = _run(tmp_path, "test")
    assert r.returncode == 3 and "--dry-run" in r.stderr
