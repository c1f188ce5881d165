"""Which kernel ran where: a table for README.md generated from committed evidence, never
written by hand.

    python bench/where_ran.py --record   # run the CPU evidence (CUDA emulation tests, Triton
                                         # interpreter tests) into bench/results/where-ran/
    python bench/where_ran.py            # rewrite the table in README.md from the evidence
    python bench/where_ran.py --check    # exit 1 if README.md's table is stale (tests run it)

Kernels: every `__global__` function of a CUDA family (its .cu files and the csrc/cuda headers
they include, as csrc/emu/cuda_emu.py's FAMILIES lists them; a csrc/cuda/*.cu in no family is a
family of its own) and every `@triton.jit` kernel (a function whose name ends in `_kernel`) of
kernels/<family>.py.
Evidence, per kernel:
  GPU          bench/results/<cuda device>/gpu-session/cuda-tests.xml (pytest -m cuda on that
               GPU, written by bench/gpu_session.sh): the tests of tests/test_<family>.py with
               this backend (cuda or triton) in their id, all passed; the device's name is its
               results folder.
  emulation    CUDA kernels: bench/results/where-ran/cuda-emu-launched.json lists the kernel as
               launched by tests/test_cuda_emu.py, and cuda-emu.xml has every test of the
               family passing.
  interpreter  Triton kernels: triton-interpreter.xml (TRITON_INTERPRET=1, tests of
               tests/test_<family>.py with `triton` in their id) all passed.
  compile only what a kernel with no run evidence has: CUDA kernels are compiled by nvcc for
               sm_90 in CI (.ci/run); Triton kernels only compile on a GPU, so without one they
               have run in the interpreter or not at all.
A cell reads "pass (n)" with the number of tests, "FAIL (k of n)", or "-" (no evidence).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EVIDENCE = RESULTS / "where-ran"
README = ROOT / "README.md"
START, END = "<!-- where-ran:start -->", "<!-- where-ran:end -->"


def _cuda_emu():
    spec = importlib.util.spec_from_file_location("cuda_emu", ROOT / "csrc" / "emu" / "cuda_emu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cuda_kernels() -> list[tuple[str, str]]:
    """(family, kernel) per CUDA kernel, families in FAMILIES order, then unlisted .cu files."""
    emu = _cuda_emu()
    out = [(fam, k) for fam in emu.FAMILIES for _, k in emu.family_kernels(fam)]
    listed = {name for names in emu.FAMILIES.values() for name in names}
    for cu in sorted(emu.CUDA_SRC.glob("*.cu")):
        if cu.name not in listed:
            out += [(cu.stem, k) for k in emu.kernels_in(cu)]
    return out


def triton_kernels() -> list[tuple[str, str]]:
    out = []
    for py in sorted((ROOT / "kernels").glob("*.py")):
        text = py.read_text()
        for m in re.finditer(r"@triton\.(?:jit|autotune\([^@]*?\)\s*@triton\.jit)[^\n]*\ndef (\w+_kernel)\(",
                             text, re.S):
            out.append((py.stem, m.group(1)))
    return out


def junit(path: Path) -> list[tuple[str, str, bool]]:
    """(test file stem, test id, passed) per test case; skipped cases are left out."""
    if not path.is_file():
        return []
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        if tc.find("skipped") is not None:
            continue
        ok = tc.find("failure") is None and tc.find("error") is None
        stem = (tc.get("classname") or "").split(".")[-1]
        cases.append((stem, tc.get("name", ""), ok))
    return cases


def cell(cases, family: str, backend: str | None, stem: str | None = None) -> str:
    """Tests of `family`: in tests/test_<family>.py with `backend` in their id, or (stem given)
    the tests named test_<family>[...] of tests/<stem>.py and every test of a family's own
    emulation file, tests/test_<family>_<stem without "test_">.py."""
    if stem is None:
        sel = [ok for st, name, ok in cases
               if st == f"test_{family}" and re.search(rf"\b{backend}\b", name)]
    else:
        own = f"test_{family}_{stem.removeprefix('test_')}"
        sel = [ok for st, name, ok in cases
               if (st == stem and name.startswith(f"test_{family}[")) or st == own]
    if not sel:
        return "-"
    bad = sel.count(False)
    return f"pass ({len(sel)})" if not bad else f"FAIL ({bad} of {len(sel)})"


def gpu_runs() -> list[tuple[str, list]]:
    """(GPU name, its junit cases) per committed GPU session."""
    runs = []
    for xml in sorted(RESULTS.glob("*/gpu-session/cuda-tests.xml")):
        runs.append((xml.parent.parent.name, junit(xml)))
    return runs


def table() -> str:
    emu = junit(EVIDENCE / "cuda-emu.xml")
    interp = junit(EVIDENCE / "triton-interpreter.xml")
    launched_file = EVIDENCE / "cuda-emu-launched.json"
    launched = set()
    if launched_file.is_file():
        for name in json.loads(launched_file.read_text()):
            m = re.search(r"::(\w+)<", name) or re.search(r"::(\w+)\(", name)
            if m:
                launched.add(m.group(1))
    gpus = gpu_runs()
    gpu_names = ", ".join(g for g, _ in gpus) or "none yet"
    rows = ["| family | kernel | kind | GPU (" + gpu_names + ") | CUDA emulation (CPU) | "
            "Triton interpreter (CPU) | compile only |",
            "| --- | --- | --- | --- | --- | --- | --- |"]

    def gpu_cell(fam, backend):
        cells = [f"{g}: {cell(c, fam, backend)}" for g, c in gpus if cell(c, fam, backend) != "-"]
        return "; ".join(cells) or "-"

    for fam, k in cuda_kernels():
        g = gpu_cell(fam, "cuda")
        e = cell(emu, fam, None, "test_cuda_emu") if k in launched else "-"
        only = "yes (nvcc sm_90, CI)" if g == "-" and e == "-" else "no"
        rows.append(f"| {fam} | `{k}` | CUDA | {g} | {e} | n/a | {only} |")
    for fam, k in triton_kernels():
        g = gpu_cell(fam, "triton")
        i = cell(interp, fam, "triton")
        only = "never compiled (needs a GPU)" if g == "-" and i == "-" else "no"
        rows.append(f"| {fam} | `{k}` | Triton | {g} | n/a | {i} | {only} |")
    src = ["bench/results/where-ran/" + p.name for p in sorted(EVIDENCE.glob("*"))] + \
          [str(x.relative_to(ROOT)) for x in sorted(RESULTS.glob("*/gpu-session/cuda-tests.xml"))]
    note = ("Generated by `python bench/where_ran.py` from " + (", ".join(src) or "no evidence")
            + "; a cell counts the tests of that family and backend that ran there (skips left "
              "out). The CUDA emulation checks arithmetic, indexing and barriers, not speed, "
              "real concurrency or the memory model.")
    return "\n".join([START, "", note, "", *rows, "", END])


def record(which: str = "all") -> int:
    """Run the CPU evidence into bench/results/where-ran/: "emu" (the CUDA emulation tests,
    ~30 s of CPU), "triton" (the interpreter tests of the Triton kernels, minutes), or "all"."""
    EVIDENCE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRITON_INTERPRET="1",
               FASTBLOCKS_EMU_LAUNCH_LOG=str(EVIDENCE / "cuda-emu-launched.json"))
    py = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    rc1 = rc2 = 0
    if which in ("all", "emu"):
        emu_files = ["tests/test_cuda_emu.py"] + sorted(
            str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*_cuda_emu.py"))
        rc1 = subprocess.run([*py, "-m", "cuda_emu", *emu_files,
                              f"--junitxml={EVIDENCE / 'cuda-emu.xml'}"], cwd=ROOT,
                             env=env).returncode
    if which in ("all", "triton"):
        rc2 = _record_triton(py, env)
    for xml in EVIDENCE.glob("*.xml"):  # drop the host name and timestamps: stable diffs
        text = re.sub(r' (hostname|timestamp|time)="[^"]*"', "", xml.read_text())
        xml.write_text(text)
    return rc1 or rc2


def _record_triton(py, env) -> int:
    fams = sorted({f for f, _ in triton_kernels()})
    files = [f"tests/test_{f}.py" for f in fams if (ROOT / "tests" / f"test_{f}.py").is_file()]
    return subprocess.run([*py, *files, "-k", "triton and not cuda",
                           f"--junitxml={EVIDENCE / 'triton-interpreter.xml'}"], cwd=ROOT,
                          env=env).returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", nargs="?", const="all", choices=["all", "emu", "triton"],
                   help="run the CPU evidence first (default all)")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    args = p.parse_args(argv)
    if args.record and record(args.record) != 0:
        print("where_ran: some evidence tests failed (recorded as FAIL)", file=sys.stderr)
    text = README.read_text()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} section", file=sys.stderr)
        return 1
    new = text[:text.index(START)] + table() + text[text.index(END) + len(END):]
    if args.check:
        if new != text:
            print("README.md's where-ran table is stale: run python bench/where_ran.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
