"""README.md's "which kernel ran where" table is what bench/where_ran.py generates from the
committed evidence (not hand-written), and it lists every CUDA and Triton kernel."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("where_ran", ROOT / "bench" / "where_ran.py")
where_ran = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(where_ran)


def test_readme_table_is_generated():
    assert where_ran.main(["--check"]) == 0, "run: python bench/where_ran.py"


def test_table_lists_every_kernel():
    table = where_ran.table()
    kernels = where_ran.cuda_kernels() + where_ran.triton_kernels()
    assert len(where_ran.cuda_kernels()) >= 10 and len(where_ran.triton_kernels()) >= 8
    for fam, k in kernels:
        assert f"| {fam} | `{k}` |" in table
