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
