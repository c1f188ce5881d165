"""The benchmark harness: builds cases, times every provider on each, reports and saves.

Providers (what a case is timed with):
  ``eager``                 the op's eager reference (PyTorch; cuDNN on GPU)
  ``compile``               ``torch.compile(eager, dynamic=False)``
  ``compile-max-autotune``  the same with ``mode="max-autotune-no-cudagraphs"`` (CUDA default;
                            CUDA graphs are left out so that every provider is timed the same
                            way: batch-1 cases get the harness's own graph timing)
  ``fastblocks:<backend>``  the fastblocks op inside ``with fastblocks.backend(<backend>)``,
                            for triton / cuda / cpu / auto (and torch, on request)

Each provider's output (and gradients, in fwd+bwd) is checked against eager before it is timed,
by the rule of tests/tolerances.py; a mismatch is reported beside the time, not hidden.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

import fastblocks

from .. import testing
from . import env
from .cases import DTYPE_SHORT, REGISTRY, Case, OpBench, get_op
from .timing import L2_FLUSH_BYTES, Budget, CudaTimer, copy_bandwidth, time_cpu_interleaved

SCHEMA = "fastblocks-bench/1"
BASE_PROVIDERS = ("eager", "compile", "compile-max-autotune")
FB_BACKENDS = ("triton", "cuda", "cpu", "auto", "torch")
ALL_PROVIDERS = BASE_PROVIDERS + tuple(f"fastblocks:{b}" for b in FB_BACKENDS)
TRITON_CPU_REASON = ("CPU tensors run Triton only in its interpreter (TRITON_INTERPRET=1), whose "
                     "timings mean nothing")
CPU_ROTATE_BYTES = 64 * 2 ** 20
CPU_MAX_SETS = 8


def normalize_provider(name: str) -> str:
    """'triton' -> 'fastblocks:triton'; 'max-autotune' -> 'compile-max-autotune'; else as is.
    ValueError for unknown names."""
    name = name.strip()
    if name in FB_BACKENDS:
        name = f"fastblocks:{name}"
    if name in ("max-autotune", "compile_max_autotune"):
        name = "compile-max-autotune"
    if name not in ALL_PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; choose from {', '.join(ALL_PROVIDERS)} "
                         "(or triton/cuda/cpu/auto/torch for fastblocks:<backend>)")
    return name


def default_providers(device_type: str, quick: bool = False) -> list[str]:
    if device_type == "cuda":
        base = ["eager", "compile"] + ([] if quick else ["compile-max-autotune"])
        return base + ["fastblocks:triton", "fastblocks:cuda", "fastblocks:auto"]
    return ["eager", "compile", "fastblocks:triton", "fastblocks:cpu", "fastblocks:auto"]


def _why_backend(backend: str, device_type: str, c_ops: Sequence[str]) -> str | None:
    """Why fastblocks backend `backend` cannot run these ops on `device_type` (None: it can)."""
    try:
        reason = fastblocks.why_unavailable(backend, device_type)
    except Exception as exc:  # pragma: no cover - defensive
        return f"{type(exc).__name__}: {exc}"
    if reason:
        return reason
    if backend in ("cpu", "cuda"):
        for op in c_ops:
            try:
                reason = fastblocks.why_unavailable(backend, device_type, op)
            except Exception as exc:  # the op is not registered in fastblocks._C at all
                reason = f"fastblocks._C has no op {op} ({type(exc).__name__})"
            if reason:
                return reason
    return None


def provider_skip_reason(provider: str, op: OpBench, device_type: str) -> str | None:
    """None if `provider` can time `op` on `device_type`, else why it is skipped."""
    if not provider.startswith("fastblocks:"):
        return None
    backend = provider.split(":", 1)[1]
    if backend == "triton":
        if device_type == "cpu":
            return TRITON_CPU_REASON
        try:
            found = importlib.util.find_spec(f"fastblocks.kernels.{op.family}") is not None
        except Exception as exc:  # fastblocks.kernels itself fails to import
            return f"fastblocks.kernels does not import ({type(exc).__name__}: {exc})"
        if not found:
            return f"no Triton kernels for the {op.family} family (fastblocks.kernels.{op.family})"
    if backend in ("auto", "torch"):
        return None
    return _why_backend(backend, device_type, op.c_ops)


def resolved_backend(case: Case, backend: str) -> str:
    """What `backend` runs for this case (auto resolves to a concrete backend)."""
    if backend != "auto":
        return backend
    from fastblocks._backend import resolve
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fastblocks.backend("auto"):
                got = resolve(case.family, case.device, case.c_ops[0] if case.c_ops else None)
    except Exception as exc:
        return f"? ({type(exc).__name__})"
    return got


# ---- configuration ---------------------------------------------------------------------------

@dataclass
class BenchConfig:
    ops: list[str]
    dtypes: list[torch.dtype] = field(default_factory=lambda: [torch.float32])
    layouts: list[str] = field(default_factory=lambda: ["nchw"])
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    batches: list[int] | None = None       # None: each op's default for the device
    shape_sets: list[str] | None = None    # None: each op's default for the device
    providers: list[str] | None = None     # None: default_providers(device)
    device: torch.device = field(default_factory=env.default_device)
    quick: bool = False
    threads: int | None = None             # CPU: torch.set_num_threads for the run
    graphs: str = "batch1"                 # CUDA graph timing: "batch1", "always", "never"
    progress: bool | None = None           # tqdm bar: None = when stderr is a terminal
    budget: Budget | None = None
    cudnn_benchmark: bool = False


def build_cases(cfg: BenchConfig) -> tuple[list[Case], list[dict]]:
    """Every case of the configuration, and notes on what was left out and why."""
    dev = torch.device(cfg.device)
    cases, notes = [], []
    for name in cfg.ops:
        op = get_op(name)
        why = op.missing()
        if why:
            notes.append({"op": name, "skipped": why})
            continue
        sets = cfg.shape_sets or op.default_sets(dev.type, cfg.quick)
        sets = [s for s in sets if s in op.shape_sets]
        if not sets:
            notes.append({"op": name, "skipped": f"none of the shape sets {cfg.shape_sets} belongs to "
                                                 f"this op (it has {', '.join(op.shape_sets)})"})
            continue
        batches = cfg.batches or op.default_batches(dev.type, cfg.quick)
        left_out_1d = False
        for set_name in sets:
            for shape in op.shapes(set_name, dev.type, batches, cfg.quick):
                for dtype in cfg.dtypes:
                    for layout in cfg.layouts:
                        for mode in cfg.modes:
                            case = op.case(shape, dtype, layout, mode, dev)
                            if case is None:
                                left_out_1d = True
                                continue
                            cases.append(case)
        if left_out_1d:
            notes.append({"op": name, "note": "sweep shapes are 1-d, so have no channels_last "
                                              "layout: left out of the channels_last cases"})
    return cases, notes


# ---- running one provider on one case --------------------------------------------------------

def _make_fn(provider: str, case: Case):
    if provider == "eager" or provider.startswith("fastblocks:"):
        return case.eager if provider == "eager" else case.fast
    # A fresh dynamo cache per compile, so recompile limits and automatic dynamic shapes never
    # turn a later case into a dynamic-shape or eager fallback.
    torch._dynamo.reset()
    if provider == "compile":
        return torch.compile(case.eager, dynamic=False)
    if provider == "compile-max-autotune":
        return torch.compile(case.eager, dynamic=False, mode="max-autotune-no-cudagraphs")
    raise ValueError(provider)


def _grad_out(out: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=out.device).manual_seed(10_000 + seed)
    g = torch.randn(out.shape, device=out.device, generator=gen, dtype=torch.float32).to(out.dtype)
    if out.dim() == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        g = g.contiguous(memory_format=torch.channels_last)
    return g


@dataclass
class _Inputs:
    args: list
    grad_args: list
    grad_out: torch.Tensor | None


def _prepare_sets(case: Case, n_sets: int) -> list[_Inputs]:
    sets = []
    for seed in range(n_sets):
        args = case.make_inputs(seed)
        grad_args, grad_out = [], None
        if case.mode == "fwd+bwd":
            for i in case.grad_idx:
                if args[i] is not None:
                    args[i].requires_grad_(True)
                    grad_args.append(args[i])
            with torch.no_grad():
                grad_out = _grad_out(case.eager(*args), seed)
        sets.append(_Inputs(args, grad_args, grad_out))
    return sets


def _call(fn, inp: _Inputs, mode: str):
    if mode == "fwd":
        # no input requires grad in fwd mode, so no autograd graph is built
        return lambda: fn(*inp.args)

    def step():
        y = fn(*inp.args)
        return torch.autograd.grad(y, inp.grad_args, inp.grad_out)
    return step


def _n_sets(case: Case) -> int:
    if case.device.type == "cuda":
        return 1  # the timer flushes L2 before every call
    return max(1, min(CPU_MAX_SETS, math.ceil(CPU_ROTATE_BYTES / max(case.bytes, 1))))


# float64 references of cases over this many float64 bytes of x are computed a chunk of the
# batch at a time: whole, the 256x96x112x112 fwd+bwd reference took the 24 GB dev box out of
# memory.
HI_CHUNK_BYTES = 512 << 20


def _reference(case: Case, inp: _Inputs):
    """Eager output and gradients on set 0, and a function returning the float64 reference
    (computed on first use, then kept; see fastblocks.testing): float32 needs it only where a
    weight or bias gradient misses assert_close."""
    def run(args, grad_args, grad_out):
        if case.mode == "fwd":
            with torch.no_grad():
                return case.eager(*args).detach(), None
        y = case.eager(*args)
        return y.detach(), [g.detach() for g in torch.autograd.grad(y, grad_args, grad_out)]
    out, grads = run(inp.args, inp.grad_args, inp.grad_out)
    if not testing.needs_reference(case.dtype):
        return out, grads, None
    cache = []

    def hi():
        if not cache:
            cache.append(_float64_reference(case, inp, run, keep_all=case.dtype != torch.float32))
        return cache[0]
    return out, grads, hi


def _float64_reference(case: Case, inp: _Inputs, run, keep_all: bool = True):
    """run() on float64 copies of the inputs. Where x is large, a chunk of images at a time:
    every op here treats the images of x (argument "x", batch first) independently, so the
    output and x's gradient are the chunks' concatenated, the other gradients their sum.
    keep_all=False (float32, whose check uses only the summed gradients) returns None for the
    output and x's gradient instead of keeping them: in float64 they are twice the size of x
    each, which ran 256x96x112x112 fwd+bwd out of the dev box's 24 GB."""
    def to_hi(a):
        return a.detach().double().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a

    xi = case.arg_names.index("x") if "x" in case.arg_names else None
    x = None if xi is None else inp.args[xi]
    n = 1 if x is None or x.dim() == 0 else x.shape[0]
    per_image = 0 if x is None else x.numel() * 8 // max(n, 1)
    step = max(1, HI_CHUNK_BYTES // max(per_image, 1))
    if x is None or n <= step:
        hi_args = [to_hi(a) for a in inp.args]
        hi_grad_args = [a for a in hi_args if isinstance(a, torch.Tensor) and a.requires_grad]
        out, grads = run(hi_args, hi_grad_args, None if inp.grad_out is None else inp.grad_out.double())
        if keep_all:
            return out, grads
        return None, None if grads is None else [
            None if case.grad_idx[j] == xi else t for j, t in enumerate(grads)]
    outs, grads = [], None
    for i0 in range(0, n, step):
        part = [to_hi(a[i0:i0 + step] if i == xi else a) for i, a in enumerate(inp.args)]
        part_grad_args = [a for a in part if isinstance(a, torch.Tensor) and a.requires_grad]
        g_out = None if inp.grad_out is None else inp.grad_out[i0:i0 + step].double()
        o, g = run(part, part_grad_args, g_out)
        if keep_all:
            outs.append(o)
        if g is not None:
            # x's gradient by image (or not at all), the others summed over the chunks
            is_x = [case.grad_idx[j] == xi for j in range(len(g))]
            if grads is None:
                grads = [([t] if keep_all else None) if bx else t for t, bx in zip(g, is_x)]
            else:
                for j, (t, bx) in enumerate(zip(g, is_x)):
                    if bx:
                        if keep_all:
                            grads[j].append(t)
                    else:
                        grads[j] = grads[j] + t
    if grads is not None:
        grads = [torch.cat(t) if isinstance(t, list) else t for t in grads]
    return (torch.cat(outs) if keep_all else None), grads


def _check(case: Case, fn, inp: _Inputs, ref) -> tuple[bool, float, str]:
    out_ref, grads_ref, hi = ref
    if case.mode == "fwd":
        # not under no_grad: a compiled fn would be guarded on grad mode and recompile later
        out, grads = fn(*inp.args), None
    else:
        y = fn(*inp.args)
        out, grads = y.detach(), torch.autograd.grad(y, inp.grad_args, inp.grad_out)
    fwd_hi = None if hi is None or case.dtype == torch.float32 else hi()[0]
    ok, err, msg = testing.compare(out.detach(), out_ref, fwd_hi)
    msgs = [] if ok else [f"forward: {msg}"]
    for j, g in enumerate(grads or ()):
        name = case.arg_names[case.grad_idx[j]] if case.arg_names else ""
        reduction = name in testing.REDUCTION_ARGS
        # float32: the float64 reference only for a reduction that misses assert_close
        lazy = case.dtype == torch.float32
        gok, gerr, gmsg = testing.compare(g, grads_ref[j], None if hi is None or lazy else hi()[1][j],
                                          reduction=reduction)
        if not gok and lazy and reduction and hi is not None:
            gok, gerr, gmsg = testing.compare(g, grads_ref[j], hi()[1][j], reduction=True)
        err = max(err, gerr)
        if not gok:
            ok = False
            arg = case.arg_names[case.grad_idx[j]] if case.arg_names else str(j)
            msgs.append(f"grad {arg}: {gmsg}")
    return ok, err, "; ".join(msgs)


def _peak_bytes(call, device) -> int:
    """Memory one call allocates at its peak, inputs excluded (CUDA)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    res = call()
    torch.cuda.synchronize(device)
    del res
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300]


def _time_provider(case: Case, provider: str, sets: list[_Inputs], ref, cfg: BenchConfig,
                   budget: Budget, timer: CudaTimer | None) -> dict:
    row: dict = {}
    backend = provider.split(":", 1)[1] if provider.startswith("fastblocks:") else None
    ctx = fastblocks.backend(backend) if backend else contextlib.nullcontext()
    if backend:
        row["backend"] = resolved_backend(case, backend)
    # Backward on the calling thread: on CUDA the autograd engine otherwise runs it on a
    # device worker thread, where the contextvar behind `fastblocks.backend(...)` is unset
    # (torch <= 2.13), so the backward would run under "auto". Applied to every provider alike.
    with ctx, torch.autograd.set_multithreading_enabled(False):
        fn = _make_fn(provider, case)
        calls = [_call(fn, inp, case.mode) for inp in sets]
        ok, err, msg = _check(case, fn, sets[0], ref)  # also the first (compiling) call
        row.update(parity_ok=ok, max_abs_err=err)
        if msg:
            row["parity_error"] = msg[:300]
        if case.device.type == "cuda":
            use_graph = cfg.graphs == "always" or (cfg.graphs == "batch1" and case.shape.batch == 1)
            timing = None
            if use_graph:
                try:
                    timing = timer.time_graph(calls, budget)
                except Exception as exc:
                    row["graph_error"] = _short_error(exc)
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize(case.device)
            if timing is None:
                timing = timer.time(calls, budget)
            row.update(timing.as_dict())
            row["peak_mem_bytes"] = _peak_bytes(calls[0], case.device)
        else:
            # timed by the caller, interleaved with the case's other providers
            # (time_cpu_interleaved); each call re-enters this provider's backend
            row["_cpu_calls"] = [_in_backend(backend, c) for c in calls]
            row["peak_mem_bytes"] = None
    return row


def _in_backend(backend: str | None, call: Callable) -> Callable:
    if backend is None:
        return call

    def run():
        # entering fastblocks.backend(...) costs ~1.9 us a call (2-core EPYC VM), a fifth of a
        # batch-1 channel shuffle: skipped where the timing loop already runs under `backend`
        if fastblocks.get_backend() == backend:
            return call()
        with fastblocks.backend(backend):
            return call()
    return run


def _time_cpu_rows(rows: list[dict], budget: Budget) -> None:
    """Time, interleaved, the CPU rows that _time_provider left calls on; store the timings."""
    pending = [r for r in rows if "_cpu_calls" in r]
    if not pending:
        return
    try:
        with torch.autograd.set_multithreading_enabled(False):
            timings = time_cpu_interleaved([r["_cpu_calls"] for r in pending], budget)
        for r, t in zip(pending, timings):
            r.update(t.as_dict())
    except Exception as exc:
        for r in pending:
            r["error"] = _short_error(exc)
    finally:
        for r in pending:
            del r["_cpu_calls"]


def time_one(case: Case, provider: str, budget: Budget | None = None, graphs: str = "batch1") -> dict:
    """Check and time one provider on one case (what `fastblocks demo` uses): a row without the
    derived columns. Errors are raised, not recorded."""
    dev = case.device
    budget = budget or Budget.quick()
    cfg = BenchConfig(ops=[case.op], device=dev, graphs=graphs, budget=budget)
    timer = CudaTimer(dev) if dev.type == "cuda" else None
    sets = _prepare_sets(case, _n_sets(case))
    with torch.autograd.set_multithreading_enabled(False):
        ref = _reference(case, sets[0])
    try:
        row = {**_case_fields(case), "provider": provider,
               **_time_provider(case, provider, sets, ref, cfg, budget, timer)}
        _time_cpu_rows([row], budget)
        return row
    finally:
        del sets, ref, timer
        _free(dev)


# ---- the run ---------------------------------------------------------------------------------

def run(cfg: BenchConfig, on_case_done: Callable[[dict], None] | None = None) -> dict:
    """Time every case of `cfg` with every provider; the results as a JSON-able dict.
    `on_case_done(results)` is called after each case with the rows so far."""
    from tqdm.auto import tqdm

    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch.cuda.is_available() is False")
    budget = cfg.budget or (Budget.quick() if cfg.quick else Budget())
    old_threads = torch.get_num_threads()
    old_cudnn = torch.backends.cudnn.benchmark
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    try:
        providers = [normalize_provider(p) for p in (cfg.providers or default_providers(dev.type, cfg.quick))]
        cases, notes = build_cases(cfg)
        skipped: list[dict] = []
        plan: dict[str, list[str]] = {}
        for name in dict.fromkeys(c.op for c in cases):
            op = REGISTRY[name]
            plan[name] = []
            for p in providers:
                why = provider_skip_reason(p, op, dev.type)
                if why:
                    skipped.append({"op": name, "provider": p, "reason": why})
                else:
                    plan[name].append(p)
        info = env.device_info(dev)
        info["host_load_avg"] = env.load_average()  # before the run: other work on the host
        if dev.type == "cpu":
            info["thread_check"] = env.cpu_oversubscribed()
            info["malloc"] = env.cpu_malloc()
        copy = copy_bandwidth(dev, budget)
        timer = CudaTimer(dev) if dev.type == "cuda" else None
        rows: list[dict] = []
        results = {
            "schema": SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "complete": False,
            "git": env.git_commit(),
            "versions": env.versions(),
            "device": {**info, "copy_bandwidth_gbps": copy["gbps"], "copy_bandwidth": copy},
            "settings": {
                "ops": cfg.ops, "dtypes": [str(d).replace("torch.", "") for d in cfg.dtypes],
                "layouts": cfg.layouts, "modes": cfg.modes, "batches": cfg.batches,
                "shape_sets": cfg.shape_sets, "providers": providers, "quick": cfg.quick,
                "threads": torch.get_num_threads(), "graphs": cfg.graphs,
                "cudnn_benchmark": cfg.cudnn_benchmark,
                "timing": _timing_note(dev, budget, cfg),
                "bytes": ("minimal bytes: every input read once, every output written once "
                          "(see fastblocks/bench/cases.py for each op's count)"),
                "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
            },
            "skipped": skipped,
            "notes": notes,
            "rows": rows,
        }
        total = sum(len(plan[c.op]) for c in cases)
        bar = tqdm(total=total, desc="fastblocks bench", unit="run", file=sys.stderr,
                   disable=(not cfg.progress) if cfg.progress is not None else None,
                   dynamic_ncols=True)
        for case in cases:
            try:
                sets = _prepare_sets(case, _n_sets(case))
                with torch.autograd.set_multithreading_enabled(False):
                    ref = _reference(case, sets[0])
            except Exception as exc:
                err = _short_error(exc)
                for p in plan[case.op]:
                    rows.append({**_case_fields(case), "provider": p, "error": f"inputs: {err}"})
                    bar.update()
                _free(dev)
                continue
            for p in plan[case.op]:
                bar.set_postfix_str(f"{case.op} {case.shape.label} {DTYPE_SHORT[case.dtype]} {p}", refresh=False)
                row = {**_case_fields(case), "provider": p, "input_sets": len(sets)}
                try:
                    row.update(_time_provider(case, p, sets, ref, cfg, budget, timer))
                except Exception as exc:  # compile failures, missing kernels, OOM: record, go on
                    row["error"] = _short_error(exc)
                    _free(dev)
                rows.append(row)
                bar.update()
            _time_cpu_rows(rows, budget)
            del sets, ref
            _free(dev)
            if on_case_done is not None:  # e.g. save partial results: a run cut short keeps them
                _derive(rows, copy["gbps"])
                on_case_done(results)
        bar.close()
        _derive(rows, copy["gbps"])
        results["complete"] = True
        return results
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_cudnn


def _free(dev):
    if dev.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def _timing_note(dev, budget: Budget, cfg: BenchConfig) -> str:
    if dev.type == "cuda":
        graphs = {"batch1": "batch-1 cases: CUDA-graph replay of 20 calls (warm L2), others: ",
                  "always": "CUDA-graph replay of 20 calls (warm L2) where capture works, else ",
                  "never": ""}[cfg.graphs]
        return (f"{graphs}CUDA events around each call after a {L2_FLUSH_BYTES >> 20} MiB L2 flush; "
                f"median of ~{budget.rep_ms:g} ms of calls after ~{budget.warmup_ms:g} ms warm-up")
    return (f"time.perf_counter per call, the case's providers alternating call by call, median "
            f"of ~{budget.cpu_rep_s:g} s of the slowest provider's calls after "
            f"~{budget.cpu_warmup_s:g} s warm-up; inputs rotated among up to {CPU_MAX_SETS} sets "
            f"(~{CPU_ROTATE_BYTES >> 20} MiB); {torch.get_num_threads()} threads")


def _case_fields(case: Case) -> dict:
    return {
        "op": case.op, "shape_set": case.shape.set, "shape": case.shape.label,
        "shape_short": case.shape.short, "params": case.shape.params, "batch": case.shape.batch,
        "dtype": DTYPE_SHORT[case.dtype], "layout": case.layout, "mode": case.mode,
        "bytes": case.bytes, "flops": case.flops, "source": case.shape.source,
    }


def case_key(row: dict) -> tuple:
    return (row["op"], row["shape_set"], row["shape"], row["dtype"], row["layout"], row["mode"])


def _derive(rows: list[dict], copy_gbps: float) -> None:
    """GB/s, % of copy bandwidth, TFLOP/s and speed-ups, in place."""
    by_case: dict[tuple, dict[str, float]] = {}
    for r in rows:
        us = r.get("median_us")
        if us:
            by_case.setdefault(case_key(r), {})[r["provider"]] = us
    for r in rows:
        us = r.get("median_us")
        if not us:
            continue
        gbps = r["bytes"] / (us * 1e-6) / 1e9
        r["gbps"] = gbps
        r["pct_copy_bw"] = 100.0 * gbps / copy_gbps if copy_gbps else None
        r["tflops"] = r["flops"] / (us * 1e-6) / 1e12 if r.get("flops") else None
        times = by_case.get(case_key(r), {})
        r["speedup_vs_eager"] = times["eager"] / us if "eager" in times else None
        r["speedup_vs_compile"] = times["compile"] / us if "compile" in times else None


# ---- saving ----------------------------------------------------------------------------------

def default_name(ops: Sequence[str], all_ops: bool = False) -> str:
    return "ops-all" if all_ops else "ops-" + "-".join(ops)


def save(results: dict, out_dir: str | os.PathLike = "bench/results", name: str = "ops",
         plot: bool = True) -> dict[str, list[str] | str]:
    """Write <out_dir>/<device-slug>/<name>.json (and the PNG plots beside it); their paths."""
    folder = Path(out_dir) / results["device"]["slug"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name).strip('-.') or 'bench'}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(results), indent=1, default=_json_default, allow_nan=False) + "\n")
    tmp.replace(path)
    out: dict = {"json": str(path), "png": []}
    if plot:
        from .plot import plot_results
        out["png"] = [str(p) for p in plot_results(results, path.with_suffix(".png"))]
    return out


def _finite(o):
    """NaN/inf -> None: JSON has no NaN."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o):
    if isinstance(o, torch.dtype):
        return str(o).replace("torch.", "")
    if isinstance(o, torch.device):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


# ---- the printed table -----------------------------------------------------------------------

def _fmt(v, spec):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def format_table(results: dict) -> str:
    """A plain-text table of the rows; columns equal on every row move to the header."""
    rows = results["rows"]
    dev = results["device"]
    lines = [f"device: {dev['name']} ({dev['slug']}); copy bandwidth {dev['copy_bandwidth_gbps']:.1f} GB/s "
             f"measured in this run; threads {results['settings']['threads']}"]
    if not rows:
        lines.append("(no rows)")
    const_cols = []
    for key, title in (("dtype", "dtype"), ("layout", "layout"), ("mode", "mode")):
        vals = {r[key] for r in rows}
        if len(vals) == 1:
            const_cols.append(f"{title} {vals.pop()}")
    if const_cols:
        lines.append(", ".join(const_cols))
    show = [k for k in ("dtype", "layout", "mode") if len({r[k] for r in rows}) > 1]
    has_flops = any(r.get("tflops") for r in rows)
    has_mem = any(r.get("peak_mem_bytes") is not None for r in rows)
    has_compile = any(r.get("speedup_vs_compile") for r in rows)
    head = ["op", "shape"] + show + ["provider", "µs", "GB/s", "%copy"]
    giga = dev["type"] == "cpu"  # CPU rates read better in GFLOP/s
    head += (["GFLOP/s" if giga else "TFLOP/s"]) if has_flops else []
    head += ["x eager"] + (["x compile"] if has_compile else []) + (["peak MB"] if has_mem else [])
    head += ["check"]
    table = [head]
    prev = None
    for r in rows:
        case = (r["op"], r["shape"]) + tuple(r[k] for k in show)
        first = list(case) if case != prev else [""] * len(case)
        prev = case
        prov = r["provider"] + (f" ({r['backend']})" if r.get("backend") and r["provider"] == "fastblocks:auto" else "")
        if "error" in r:
            table.append(first + [prov, "failed: " + r["error"][:70]])
            continue
        cells = [prov, _fmt(r.get("median_us"), ".1f"), _fmt(r.get("gbps"), ".1f"),
                 _fmt(r.get("pct_copy_bw"), ".0f")]
        if has_flops:
            tf = r.get("tflops")
            cells.append(_fmt(tf * 1e3 if (giga and tf) else tf, ".1f" if giga else ".2f"))
        cells.append(_fmt(r.get("speedup_vs_eager"), ".2f"))
        if has_compile:
            cells.append(_fmt(r.get("speedup_vs_compile"), ".2f"))
        if has_mem:
            pm = r.get("peak_mem_bytes")
            cells.append("-" if pm is None else f"{pm / 2 ** 20:.1f}")
        if r.get("parity_ok"):
            check = "ok"
        else:
            what = (r.get("parity_error") or "").split(":", 1)[0]
            check = f"MISMATCH {what}, err {_fmt(r.get('max_abs_err'), '.1e')}"
        if r.get("timing", "").startswith("cuda graph"):
            check += " graph"
        cells.append(check)
        table.append(first + cells)
    widths = {}
    for row in table:
        cells = row if len(row) == len(head) else row[:-1]  # a failure's message runs on
        for i, cell in enumerate(cells):
            widths[i] = max(widths.get(i, 0), len(cell))
    numeric = set(range(len(head))) - {0, 1, len(show) + 2, len(head) - 1} - {2 + i for i in range(len(show))}
    out = []
    for row in table:
        if len(row) != len(head):  # a failure row: let the message run on
            n_fixed = len(row) - 1
            out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:n_fixed])) + "  " + row[-1])
            continue
        out.append("  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i])
                             for i, c in enumerate(row)).rstrip())
    out.insert(1, "-" * max(len(line) for line in out[:1]))
    lines.extend(out)
    skipped: dict[tuple, list[str]] = {}
    for s in results.get("skipped", []):
        skipped.setdefault((s["provider"], s["reason"]), []).append(s["op"])
    for (prov, reason), ops in skipped.items():
        lines.append(f"skipped {prov} ({', '.join(ops)}): {reason}")
    for n in results.get("notes", []):
        lines.append(f"{n['op']}: {n.get('skipped') or n.get('note')}")
    if any(r.get("parity_ok") is False for r in rows):
        lines.append("MISMATCH: that provider's output (or a gradient) is not within the parity rule of "
                     "tests/tolerances.py against eager; the JSON's parity_error says more")
    if any((r.get("pct_copy_bw") or 0) > 100 for r in rows):
        lines.append("%copy above 100: the data fit in cache; the copy ceiling is measured on buffers "
                     "far larger than any cache")
    load, ncpu = dev.get("host_load_avg"), dev.get("logical_cpus") or os.cpu_count() or 1
    check = dev.get("thread_check") or {}
    if check.get("oversubscribed"):
        lines.append(f"WARNING: other processes hold the CPU: a parallel op took {check['multi_us']:g} µs "
                     f"with {check['threads']} threads vs {check['single_us']:g} µs with 1, so these "
                     f"timings measure the scheduler; rerun on a quiet host or with --threads 1")
    elif dev["type"] == "cpu" and load is not None and load > 0.75 * ncpu:
        lines.append(f"warning: the host was busy when the run began (load average {load:g} on "
                     f"{ncpu} CPUs): CPU timings may be noisy")
    malloc = dev.get("malloc")
    if malloc and not malloc["reuses_freed_memory"]:
        lines.append("note: glibc's default malloc: every new CPU tensor over 32 MB is a fresh mmap that "
                     "page-faults on first touch, a cost every provider pays alike (the command line "
                     "re-runs itself to avoid it unless --system-malloc)")
    graph_errors = {r["graph_error"] for r in rows if r.get("graph_error")}
    for e in sorted(graph_errors):
        lines.append(f"CUDA graph capture failed (timed without graphs): {e}")
    return "\n".join(lines)
