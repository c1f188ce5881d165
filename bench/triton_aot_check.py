"""Compile every Triton kernel specialization the ops launch, ahead of time for sm_90, without a
GPU: the compile errors the interpreter (TRITON_INTERPRET=1) never shows, found on a CPU.

    python bench/triton_aot_check.py [--quick] [--one-per-kernel] [--jobs 2] [--json OUT]
                                     [--families depthwise,shuffle] [--dtypes bfloat16]

The interpreter runs kernel bodies as numpy and never lowers them, so a kernel that passes
every interpreter test may still fail to compile on a GPU (type promotion in tl.where or
tl.dot, bf16/fp16 arithmetic, an int argument equal to 1 that Triton turns into a constexpr,
tl.dot operand dtypes and tile minimums, a config that needs more shared memory than the
SM has). Three steps:

1. record (a child process under TRITON_INTERPRET=1): the ops' own code paths run on CPU
   tensors with the ``triton`` backend, forward and backward, fp32/fp16/bf16, NCHW and
   channels_last, over shapes and options chosen to reach every constexpr branch and the
   argument values Triton specializes on (ints equal to 1, multiples of 16, pointer
   alignment). ``triton.runtime.autotuner.Autotuner.run`` is replaced by a recorder: each
   launch's arguments are kept and the kernel body is not executed (so bf16 records like the
   rest and realistic sizes cost nothing; the outputs stay uninitialized, which no launcher
   reads back).
2. expand (this process, interpreter off): each launch x each config of the kernel's
   autotune list (the prior only with --quick), the ``derive`` meta-parameters computed as
   kernels/_autotune.py's heuristics do, then Triton's own binder
   (``create_function_from_signature`` + ``JITFunction._pack_args``, what ``JITFunction.run``
   calls) for target GPUTarget("cuda", 90, 32) (warp size 32) turns it into the exact
   (signature, constexprs, attributes, options) a GPU would compile. Duplicates dropped.
3. compile (a spawn pool, --jobs workers, 2 by default: the dev VM is shared): triton.compile
   down to a cubin with Triton's own ptxas; shared memory from the metadata, registers and
   local memory (spills) from ``cuobjdump --dump-resource-usage``. A kernel that compiles but
   could not launch on an H100/H200 counts as a failure too: shared memory above 232448 bytes
   (the sm_90 opt-in maximum per block) or registers x threads above 65536.

Configs the autotuner would prune for a launch's shape are compiled too (they may serve
another shape); the report counts them apart. Each run compiles into a fresh Triton cache
(--reuse-cache: Triton's own), so the times are compile times. Exit status 1 if anything
failed. ``tests/test_triton_aot.py`` runs ``--quick --one-per-kernel --dtypes bfloat16``.

Measured (the shared 2-core dev VM, Triton 3.9, 2 workers, fresh cache): the full run records
718 launches and compiles 2280 specializations in 1812 s; --quick 606 in 395 s (640 since
the wide 1x1 conv case joined); fp64 --quick 174 in 102 s; the test's
19 in 34 s. None failed. Stack (spilled registers) in conv_gemm (457 of 672 specializations,
up to 4.5 KB per thread; 298 of them tiles its autotuner prunes for that shape), grouped_conv
(30 of 96, up to 472 B) and two depthwise NHWC specializations (16 B). Triton internals used:
``create_function_from_signature`` and ``JITFunction._pack_args`` (checked with Triton 3.9
only).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

FAMILIES = ("activation", "depthwise", "squeeze_excite", "shuffle", "grouped_conv", "conv_bn_act")
DTYPES = ("float32", "float16", "bfloat16")
SM90_MAX_SHARED = 232448   # bytes per block, opt-in (cudaDevAttrMaxSharedMemoryPerBlockOptin)
SM90_REGS_PER_BLOCK = 65536
RECORD_FLAG = "--record-to"


# ------------------------------------------------------------------------ argument encoding

def _encode(v):
    """A launch argument as JSON: tensors by dtype and 16-byte alignment (all Triton
    specializes a pointer on), scalars as they are, tl.dtype constexprs by name."""
    import torch
    import triton.language as tl
    if isinstance(v, torch.Tensor):
        return {"tensor": str(v.dtype).removeprefix("torch."), "align16": v.data_ptr() % 16 == 0}
    if isinstance(v, tl.dtype):
        return {"tl": v.name}
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"v": v}
    raise TypeError(f"cannot record a launch argument of type {type(v).__name__}")


class _FakeTensor:
    """What Triton's binder reads of a tensor argument: its dtype and data_ptr."""

    def __init__(self, dtype, align16: bool):
        self.dtype = dtype
        self._ptr = 1 << 20 if align16 else (1 << 20) + 2

    def data_ptr(self):
        return self._ptr


def _decode(e):
    import torch
    import triton.language as tl
    if "tensor" in e:
        return _FakeTensor(getattr(torch, e["tensor"]), e["align16"])
    if "tl" in e:
        return tl.dtype(e["tl"])
    return e["v"]


# ------------------------------------------------------------------------------ 1. record

def _record(path: str, families, dtypes) -> None:
    """Run the recording cases under the interpreter; write the launches as JSON lines."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "the recorder runs under the interpreter"
    import torch
    from triton.runtime.autotuner import Autotuner

    import fastblocks
    from fastblocks.kernels._autotune import kernel_name

    seen, launches, case = set(), [], {"label": ""}

    def recording_run(self, *args, grid=None, warmup=False, **kwargs):
        rec = {"module": self.base_fn.__module__, "kernel": self.base_fn.__name__,
               "name": kernel_name(self), "args": [_encode(a) for a in args],
               "kwargs": {k: _encode(v) for k, v in kwargs.items()}}
        key = json.dumps(rec, sort_keys=True)
        if key not in seen:
            seen.add(key)
            launches.append({**rec, "case": case["label"]})
        return None  # the body is not executed: only the launch is recorded

    Autotuner.run = recording_run
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import triton_aot_cases as cases
    with fastblocks.backend("triton"):
        for family in families:
            for dtype in dtypes:
                for cl in (False, True):
                    for label, run in getattr(cases, family)(getattr(torch, dtype), cl):
                        case["label"] = f"{family} {dtype} {'NHWC' if cl else 'NCHW'} {label}"
                        run()
    with open(path, "w") as f:
        for rec in launches:
            f.write(json.dumps(rec) + "\n")


def record(families, dtypes) -> list[dict]:
    """The launches, from a child process under TRITON_INTERPRET=1 (the kernels are
    decorated at import time, so the interpreter must be on before fastblocks.kernels is)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "launches.jsonl")
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), RECORD_FLAG, out,
               "--families", ",".join(families), "--dtypes", ",".join(dtypes)]
        subprocess.run(cmd, env=env, check=True)
        with open(out) as f:
            return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------ 2. expand

_BINDERS: dict = {}


def _target():
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", 90, 32)


def _tuner(rec):
    return getattr(importlib.import_module(rec["module"]), rec["kernel"])


def _jit_fn(tuner):
    from triton.runtime.jit import JITFunction
    fn = tuner.fn
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def specialize(rec, config_index: int):
    """(fn, signature, constexprs, attrs, options, config, kept): what JITFunction.run would
    compile for this launch under config `config_index` on sm_90; `kept`: whether the
    autotuner's early prune keeps the config for this launch's shape."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    tuner = _tuner(rec)
    fn = _jit_fn(tuner)
    args = [_decode(a) for a in rec["args"]]
    kwargs = {k: _decode(v) for k, v in rec["kwargs"].items()}
    nargs = dict(zip(tuner.arg_names, args))
    config = tuner.configs[config_index]
    kept = True
    if tuner.early_config_prune is not None:
        kept = config in tuner.early_config_prune(tuner.configs, nargs, **kwargs)
    kw = {**kwargs, **config.all_kwargs()}
    derive = getattr(tuner.fn, "values", None)  # triton.heuristics under the autotuner
    if derive:
        for name, f in derive.items():
            kw[name] = f({**nargs, **kw})
    kw["debug"] = bool(fn.debug)
    if id(fn) not in _BINDERS:
        backend = make_backend(_target())
        _BINDERS[id(fn)] = backend, create_function_from_signature(fn.signature, fn.params,
                                                                   backend)
    backend, binder = _BINDERS[id(fn)]
    bound, spec, opts = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    return fn, signature, constexprs, attrs, options, config, kept


def _spec_key(rec, signature, constexprs, attrs, options) -> str:
    return repr((rec["module"], rec["kernel"], sorted(signature.items()),
                 sorted((k, repr(v)) for k, v in constexprs.items()),
                 sorted((k, repr(v)) for k, v in attrs.items()),
                 sorted((k, repr(v)) for k, v in options.__dict__.items())))


def expand(launches, quick: bool, one_per_kernel: bool) -> list[dict]:
    """The distinct compile jobs: {rec, config_index, kept, label}."""
    jobs, seen, kernels_done = [], set(), set()
    for rec in launches:
        if one_per_kernel and rec["name"] in kernels_done:
            continue
        n = 1 if quick else len(_tuner(rec).configs)
        for i in range(n):
            _, signature, constexprs, attrs, options, config, kept = specialize(rec, i)
            key = _spec_key(rec, signature, constexprs, attrs, options)
            if key in seen:
                continue
            seen.add(key)
            kernels_done.add(rec["name"])
            sig = ", ".join(f"{k}:{v}" for k, v in signature.items() if v != "constexpr")
            const = ", ".join(f"{fn_arg(rec, k)}={v!r}" for k, v in constexprs.items())
            jobs.append({"rec": rec, "config_index": i, "kept": kept, "case": rec["case"],
                         "kernel": rec["name"], "config": _config_str(config),
                         "spec": f"({sig}) [{const}]"})
    return jobs


def fn_arg(rec, path) -> str:
    return _tuner(rec).arg_names[path[0]]


def _config_str(c) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in c.kwargs.items())
    return f"{kw}, warps={c.num_warps}, stages={c.num_stages}"


# ----------------------------------------------------------------------------- 3. compile

def _worker_init(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if cache_dir:
        os.environ["TRITON_CACHE_DIR"] = cache_dir


def _resource_usage(cubin: bytes) -> dict:
    """REG and LOCAL (bytes of local memory per thread: spills and stack arrays) of the
    kernel, from cuobjdump (Triton's own copy, else the one on PATH)."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    exe = str(tool) if tool.exists() else "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([exe, "--dump-resource-usage", f.name], capture_output=True,
                                 text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
    usage = {}
    for field in ("REG", "STACK", "LOCAL"):
        m = re.search(rf"\b{field}:(\d+)", out)
        if m:
            usage[field.lower()] = int(m.group(1))
    return usage


def compile_job(job: dict) -> dict:
    """Compile one job for sm_90; the job's fields plus ok, error, seconds, shared, reg,
    local, stack."""
    import triton
    from triton.compiler import ASTSource
    t0 = time.perf_counter()
    res = {k: job[k] for k in ("kernel", "case", "config", "spec", "kept")}
    try:
        fn, signature, constexprs, attrs, options, _, _ = specialize(job["rec"],
                                                                      job["config_index"])
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            k = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=_target(),
                               options=options.__dict__)
        res.update(ok=True, shared=int(k.metadata.shared), **_resource_usage(k.asm["cubin"]))
        threads = options.num_warps * 32
        if "reg" not in res:  # without the count the registers x threads limit is unchecked
            res.update(ok=False, error="no register count: cuobjdump --dump-resource-usage "
                                       "failed or is missing (Triton's bin/ or PATH)")
        elif res["shared"] > SM90_MAX_SHARED:
            res.update(ok=False, error=f"OutOfResources: {res['shared']} bytes of shared "
                                       f"memory, sm_90 allows {SM90_MAX_SHARED} per block")
        elif res["reg"] * threads > SM90_REGS_PER_BLOCK:
            res.update(ok=False, error=f"OutOfResources: {res['reg']} registers x {threads} "
                                       f"threads > {SM90_REGS_PER_BLOCK}")
    except Exception as e:  # noqa: BLE001 -- every compile error is a result to report
        msg = f"{type(e).__name__}: {e}".strip()
        res.update(ok=False, error=msg[-3000:])
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def compile_all(jobs, n_workers: int, cache_dir: str, progress=True) -> list[dict]:
    ctx = get_context("spawn")
    results = []
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(cache_dir,)) as pool:
        for i, res in enumerate(pool.map(compile_job, jobs, chunksize=1)):
            results.append(res)
            if progress:
                mark = "ok " if res["ok"] else "FAIL"
                print(f"[{i + 1}/{len(jobs)}] {mark} {res['seconds']:5.1f}s {res['kernel']} "
                      f"({res['config']})", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------------------ the report

def summarize(results) -> dict:
    per = defaultdict(lambda: {"specializations": 0, "ok": 0, "failed": 0, "pruned": 0,
                               "max_shared": 0, "max_reg": 0, "local": 0, "seconds": 0.0})
    for r in results:
        s = per[r["kernel"]]
        s["specializations"] += 1
        s["ok" if r["ok"] else "failed"] += 1
        s["pruned"] += not r["kept"]
        s["max_shared"] = max(s["max_shared"], r.get("shared", 0))
        s["max_reg"] = max(s["max_reg"], r.get("reg", 0))
        s["local"] += r.get("local", 0) > 0 or r.get("stack", 0) > 0
        s["seconds"] = round(s["seconds"] + r["seconds"], 2)
    return dict(sorted(per.items()))


def table(summary, results) -> str:
    rows = [f"{'kernel':42} {'specs':>5} {'ok':>4} {'fail':>4} {'pruned':>6} "
            f"{'shared KB':>9} {'max reg':>7} {'spill':>5} {'compile s':>9}"]
    for k, s in summary.items():
        rows.append(f"{k:42} {s['specializations']:5} {s['ok']:4} {s['failed']:4} "
                    f"{s['pruned']:6} {s['max_shared'] / 1024:9.1f} {s['max_reg']:7} "
                    f"{s['local']:5} {s['seconds']:9.1f}")
    failures = defaultdict(list)
    for r in results:
        if not r["ok"]:
            first = next((ln for ln in r["error"].splitlines() if ln.strip()), r["error"])
            failures[(r["kernel"], first[:300])].append(r)
    for (kernel, first), rs in failures.items():
        r = rs[0]
        rows += ["", f"FAILED {kernel}: {len(rs)} specialization(s), e.g. {r['case']}",
                 f"  config {r['config']}", f"  {r['spec']}",
                 "  " + r["error"][-1500:].replace("\n", "\n  ")]
    spills = defaultdict(list)  # local memory per thread: spilled registers (a slowdown)
    for r in results:
        if r["ok"] and (r.get("local", 0) or r.get("stack", 0)):
            spills[(r["kernel"], r["config"])].append(r)
    for (kernel, config), rs in spills.items():
        worst = max(rs, key=lambda r: r.get("stack", 0) + r.get("local", 0))
        rows.append(f"spills: {kernel} ({config}): {len(rs)} specialization(s), up to "
                    f"{worst.get('stack', 0)} B stack / {worst.get('local', 0)} B local, "
                    f"{sum(not r['kept'] for r in rs)} of them pruned by the autotuner for "
                    f"their shape; worst {worst['case']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the prior config of each kernel only")
    p.add_argument("--one-per-kernel", action="store_true",
                   help="the first recorded specialization of each kernel only")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    p.add_argument("--json", help="write the summary and every result here")
    p.add_argument("--reuse-cache", action="store_true",
                   help="compile into Triton's own cache (default: a fresh one per run)")
    p.add_argument("--list", action="store_true",
                   help="record and count the specializations per kernel; compile nothing")
    p.add_argument(RECORD_FLAG, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    families = [f for f in a.families.split(",") if f]
    dtypes = [d for d in a.dtypes.split(",") if d]
    if a.record_to:
        _record(a.record_to, families, dtypes)
        return 0
    os.environ.pop("TRITON_INTERPRET", None)  # this process and the pool compile for real
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    t0 = time.perf_counter()
    launches = record(families, dtypes)
    t_record = time.perf_counter() - t0
    jobs = expand(launches, a.quick, a.one_per_kernel)
    t_expand = time.perf_counter() - t0 - t_record
    print(f"{len(launches)} distinct launches recorded in {t_record:.1f} s; {len(jobs)} "
          f"specializations to compile for sm_90 ({t_expand:.1f} s)", file=sys.stderr)
    if a.list:
        for kernel, n in sorted(Counter(j["kernel"] for j in jobs).items()):
            print(f"{kernel:42} {n:4}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = compile_all(jobs, a.jobs, "" if a.reuse_cache else tmp)
    total = time.perf_counter() - t0
    summary = summarize(results)
    print(table(summary, results))
    n_fail = sum(not r["ok"] for r in results)
    print(f"\n{len(results)} specializations, {n_fail} failed; {total:.1f} s in all "
          f"(record {t_record:.1f} s, {a.jobs} compile worker(s))")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "results": results,
                                            "seconds": round(total, 1)}, indent=1) + "\n")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
