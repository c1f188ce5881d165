"""MODEL = package.module:factory as a user gives it: their own file in the directory they run
`fastblocks` from (the console script's sys.path[0] is its bin/ folder, not the current
directory), and the errors for the mistakes they make."""
from __future__ import annotations

import os
import sys

import pytest

from fastblocks.cli._common import UsageError
from fastblocks.cli._model_spec import load_model

_USER_MODEL = """
from torch import nn

class Net(nn.Sequential):
    input_size = (3, 8, 8)

def make():
    return Net(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory holding the user's fb_user_model.py, made the current one; sys.path as the
    console script has it (no '' or current-directory entry)."""
    (tmp_path / "fb_user_model.py").write_text(_USER_MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    monkeypatch.delitem(sys.modules, "fb_user_model", raising=False)
    yield tmp_path
    sys.modules.pop("fb_user_model", None)


def test_factory_in_the_current_directory_is_found(user_dir):
    spec = load_model("fb_user_model:make")
    assert spec.label == "fb_user_model:make"
    assert spec.input_size == (3, 8, 8)  # the model's own input_size attribute


def test_missing_module_says_where_it_looked(user_dir):
    with pytest.raises(UsageError, match=r"no_such_user_module.*current directory.*PYTHONPATH"):
        load_model("no_such_user_module:make")


def test_missing_factory_names_the_module(user_dir):
    with pytest.raises(UsageError, match=r"fb_user_model has no attribute 'nope'"):
        load_model("fb_user_model:nope")


def test_empty_factory_name_is_a_usage_error(user_dir):
    with pytest.raises(UsageError, match=r"package\.module:factory"):
        load_model("fb_user_model:")


def test_verify_model_takes_one_dtype(capsys):
    from fastblocks.cli import main
    assert main(["verify", "mobilenet_v2", "--dtype", "fp32", "--dtype", "fp16"]) == 2
    assert "one --dtype" in capsys.readouterr().err


def make_zero_output():
    """A model whose output is all zeros (as zoo mobilenet_v2's is at random init in float16 at
    32x32: its activations shrink to ~1e-8 by the last block and underflow)."""
    from torch import nn
    head = nn.Conv2d(4, 2, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(), head)


def test_verify_model_with_all_zero_output_is_inconclusive(capsys):
    """Comparing zeros with zeros proves nothing: no PASS, exit 1."""
    from fastblocks.cli import main
    rc = main(["verify", f"{__name__}:make_zero_output", "--size", "8", "--mode", "eval"])
    out = capsys.readouterr().out
    assert rc == 1 and "INCONCLUSIVE" in out and "PASS" not in out


def test_bench_models_names_a_bf16_file_bf16(tmp_path, capsys):
    """The results file says bf16 (it said 'bfp16': 'float' was replaced before 'bfloat16')."""
    from fastblocks.cli import main
    rc = main(["bench", "models", "--model", f"{__name__}:make_zero_output", "--size", "8",
               "--batch", "1", "--dtype", "bf16", "--quick", "--providers", "eager,fastblocks",
               "--out", str(tmp_path), "--no-progress", "--no-plot", "--threads", "1"])
    assert rc == 0
    names = [p.name for p in tmp_path.rglob("*.json")]
    assert len(names) == 1 and "-b1-bf16-eval" in names[0], names
