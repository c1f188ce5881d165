"""The `fastblocks` command line.

    fastblocks info                         versions, device, backends, what `auto` picks
    fastblocks list                         benchmark ops and their shape sets
    fastblocks demo                         parity + speed of every op family on this device
    fastblocks verify [--op NAME]           parity with eager on a small fuzz; exit 1 on failure
    fastblocks bench ops --op NAME|all ...  time ops vs eager / torch.compile; table, JSON, PNG
    fastblocks bench list                   ops and shape sets

Bad arguments (an unknown op, dtype, provider, ...) exit with code 2 and a message.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Sequence


class _UsageError(Exception):
    """A bad argument found after parsing: printed as `fastblocks: error: ...`, exit code 2."""


# ---- fastblocks info -------------------------------------------------------------------------

def _families():
    """(family, c_op, ops, missing reason) per op family registered in the benchmarks."""
    from .bench.cases import REGISTRY
    fams: dict[str, dict] = {}
    for name, op in REGISTRY.items():
        f = fams.setdefault(op.family, {"c_op": op.c_ops[0] if op.c_ops else None, "ops": [],
                                        "missing": op.missing()})
        f["ops"].append(name)
    return fams


def _auto_pick(family: str, c_op: str | None, device_type: str) -> str:
    import torch

    import fastblocks
    from fastblocks._backend import resolve
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fastblocks.backend("auto"):
                got = resolve(family, torch.device(device_type), c_op)
    except Exception as exc:  # an op not registered in fastblocks._C, for instance
        return f"? ({type(exc).__name__}: {exc})"
    if got == "torch":
        reason = str(caught[0].message) if caught else ""
        return "torch (eager fallback: no kernel backend" + (f"; {reason.split('(', 1)[-1]}" if reason else ")")
    return got


def cmd_info(args) -> int:
    import torch

    import fastblocks
    from fastblocks import _extension
    from .bench import env

    v = env.versions()
    print(f"fastblocks {v['fastblocks']}")
    print("versions")
    print(f"  python      {v['python']}")
    cuda = f"CUDA {v['cuda']}" if v["cuda"] else "CPU-only build"
    print(f"  torch       {v['torch']} ({cuda})")
    print(f"  triton      {v['triton'] or 'not installed: ' + str(_extension.TRITON_ERROR)}")
    print(f"  _C          {'loaded' if _extension.C_ERROR is None else _extension.C_ERROR}")
    print(f"  TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    print("device")
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        for i in range(torch.cuda.device_count()):
            d = env.device_info(torch.device("cuda", i))
            print(f"  GPU {i}       {d['name']} (sm {d['capability']}, {d['multiprocessors']} SMs, "
                  f"{d['memory_bytes'] / 2 ** 30:.0f} GiB)")
    else:
        print("  GPU         none (torch.cuda.is_available() is False)")
    cpu = env.device_info("cpu")
    print(f"  CPU         {cpu['name']}, {cpu['logical_cpus']} logical CPUs, torch uses {cpu['threads']} threads")
    device_types = ["cpu", "cuda"]
    for dt in device_types:
        print(f"backends for {dt} tensors")
        for name in fastblocks.BACKENDS:
            reason = fastblocks.why_unavailable(name, dt)
            note = " (eager reference)" if name == "torch" else ""
            print(f"  {name:<8}  {'available' + note if reason is None else 'unavailable: ' + reason}")
    print("auto picks (per op family)")
    for family, f in _families().items():
        ops = ", ".join(f["ops"])
        if f["missing"]:
            print(f"  {family:<11} op not available: {f['missing']}")
            continue
        picks = [f"cpu tensors -> {_auto_pick(family, f['c_op'], 'cpu')}"]
        if has_cuda:
            picks.append(f"cuda tensors -> {_auto_pick(family, f['c_op'], 'cuda')}")
        else:
            picks.append("cuda tensors -> (no GPU here)")
        print(f"  {family:<11} {'; '.join(picks)}   [{ops}]")
    return 0


# ---- fastblocks list / bench list ------------------------------------------------------------

def cmd_list(args) -> int:
    from .bench.cases import REGISTRY
    print("benchmark ops (fastblocks bench ops --op NAME; --shapes SET)")
    for name, op in REGISTRY.items():
        missing = op.missing()
        print(f"  {name:<17} {op.description}" + (f"  [NOT AVAILABLE: {missing}]" if missing else ""))
        for set_name, desc in op.shape_sets.items():
            n_cpu = len(op.shapes(set_name, "cpu", [1], False))
            n_gpu = len(op.shapes(set_name, "cuda", [1], False))
            count = f"{n_cpu} shapes" if n_cpu == n_gpu else f"{n_cpu} shapes on CPU, {n_gpu} on GPU"
            if set_name != "sweep":
                count += " per batch size"
            print(f"      {set_name:<19} {desc} ({count})")
        print(f"      defaults: cuda {op.default_sets('cuda', False)} batch {op.default_batches('cuda', False)}; "
              f"cpu {op.default_sets('cpu', False)} batch {op.default_batches('cpu', False)}")
    try:
        from . import models  # noqa: F401  (the model zoo, when it exists)
        names = models.list_models()
        print(f"models ({len(names)}): {', '.join(names)}")
    except Exception:
        pass
    return 0


# ---- fastblocks bench ops --------------------------------------------------------------------

def _dtype(text: str):
    from .bench.cases import DTYPE_ALIASES, DTYPES
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; choose from {', '.join(DTYPES)} (or fp32, fp16, bf16, fp64)")
    return DTYPES[name]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _resolve_ops(names: Sequence[str] | None, required: bool) -> tuple[list[str], bool]:
    from .bench.cases import REGISTRY
    if not names:
        if required:
            raise _UsageError("name an op with --op NAME (or --op all); `fastblocks bench list` lists them")
        return list(REGISTRY), True
    out, all_ops = [], False
    for name in names:
        for part in name.split(","):
            part = part.strip()
            if part == "all":
                all_ops = True
                out.extend(REGISTRY)
            elif part in REGISTRY:
                out.append(part)
            else:
                raise _UsageError(f"unknown op {part!r}; registered ops: {', '.join(REGISTRY)}, or 'all'")
    return list(dict.fromkeys(out)), all_ops


def _device(name: str | None):
    import torch

    from .bench import env
    if name is None:
        return env.default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
    return torch.device(name)


def _reexec_with_reused_memory() -> None:
    """Re-run this command with glibc's malloc keeping freed memory for reuse.

    By default glibc serves each allocation over 32 MB with a fresh mmap and unmaps it on free,
    so every call that makes such a tensor page-faults on its first touch, 4 KiB at a time: on
    the 2-core VM the CPU results come from, relu of a new 95 MB tensor took 31 ms, of which
    the kernel is 4 ms (a copy into an existing buffer: 6 ms). That cost lands on every
    provider alike, is noisy, and hides the kernels; a training loop on a caching allocator
    (jemalloc, tcmalloc, or PyTorch's own on CUDA) does not pay it. With mmap off and no
    trimming, freed tensors are reused: 4.1 ms. glibc reads the tunables at start-up, hence a
    new process. Tunables the caller set are left alone.
    """
    from .bench import env as bench_env

    if os.environ.get(bench_env.MALLOC_TUNABLES_ENV):
        return
    env = {**os.environ, bench_env.MALLOC_TUNABLES_ENV: bench_env.REUSE_MEMORY_TUNABLES}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastblocks.cli", *sys.argv[1:]], env)


def cmd_bench_ops(args) -> int:
    from .bench import harness
    from .bench.cases import REGISTRY

    ops, all_ops = _resolve_ops(args.op, required=True)
    device = _device(args.device)
    if device.type == "cpu" and not args.system_malloc and args.from_command_line:
        _reexec_with_reused_memory()
    providers = None
    if args.providers:
        try:
            providers = [harness.normalize_provider(p) for item in args.providers for p in item.split(",") if p]
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        providers = list(dict.fromkeys(providers))
    if args.max_autotune:
        providers = providers or harness.default_providers(device.type, args.quick)
        if "compile-max-autotune" not in providers:
            providers.insert(providers.index("compile") + 1 if "compile" in providers else 1,
                             "compile-max-autotune")
    if args.shapes:
        known = {s for n in ops for s in REGISTRY[n].shape_sets}
        bad = [s for s in args.shapes if s not in known]
        if bad:
            raise _UsageError(f"unknown shape set(s) {', '.join(bad)} for {', '.join(ops)}; "
                              f"choose from {', '.join(sorted(known))}")
    cfg = harness.BenchConfig(
        ops=ops, dtypes=list(dict.fromkeys(args.dtype or [_dtype("float32")])),
        layouts=list(dict.fromkeys(args.layout or ["nchw"])),
        modes=list(dict.fromkeys(args.mode or ["fwd"])), batches=args.batch,
        shape_sets=args.shapes, providers=providers, device=device, quick=args.quick,
        threads=args.threads, graphs=args.graphs,
        progress=False if args.no_progress else None, cudnn_benchmark=args.cudnn_benchmark,
    )
    cases, notes = harness.build_cases(cfg)
    print(f"fastblocks bench: {len(cases)} cases on {device.type}"
          + (f" ({', '.join(sorted({c.op for c in cases}))})" if cases else ""), flush=True)
    for n in notes:
        if "skipped" in n:
            print(f"  skipped {n['op']}: {n['skipped']}")
    if not cases:
        print("nothing to run", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    name = args.name or harness.default_name(ops, all_ops)
    command = "fastblocks " + " ".join(args.argv)

    def partial(results):  # a run cut short (a timeout) still leaves its rows on disk
        results["command"] = command
        harness.save(results, args.out, name, plot=False)

    results = harness.run(cfg, on_case_done=partial)
    results["command"] = command
    print()
    print(harness.format_table(results))
    paths = harness.save(results, args.out, name, plot=not args.no_plot)
    print()
    print(f"results: {os.path.abspath(paths['json'])}")
    for p in paths["png"]:
        print(f"plot:    {os.path.abspath(p)}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


# ---- fastblocks demo -------------------------------------------------------------------------

def _fmt_err(e):
    if e is None:
        return "-"
    if isinstance(e, float) and math.isnan(e):
        return "nan"
    return "0" if e == 0 else f"{e:.1e}"


def cmd_demo(args) -> int:
    import torch

    from .bench import env

    device = _device(args.device)
    old_threads = torch.get_num_threads()
    thread_note = ""
    if device.type == "cpu":
        if args.threads:
            torch.set_num_threads(args.threads)
        else:
            check = env.cpu_oversubscribed()
            if check["oversubscribed"]:
                torch.set_num_threads(1)
                thread_note = (f" (other processes hold the CPU: {check['threads']} threads took "
                               f"{check['multi_us'] / 1000:.0f} ms per parallel op, so timing with 1)")
    try:
        return _demo(args, device, thread_note)
    finally:
        torch.set_num_threads(old_threads)


def _demo(args, device, thread_note: str) -> int:
    import torch

    import fastblocks
    from . import testing as parity
    from .bench import env
    from .bench.cases import REGISTRY
    from .bench.harness import resolved_backend, time_one
    from .bench.timing import Budget

    v = env.versions()
    info = env.device_info(device)
    where = (f"GPU {info['name']}" if device.type == "cuda"
             else f"CPU {info['name']}, {info['threads']} thread{'s' if info['threads'] != 1 else ''}{thread_note}"
             + (" (no GPU here)" if not torch.cuda.is_available() else ""))
    print("fastblocks demo: parity with eager PyTorch and speed, one real layer shape per op")
    print(f"  device  {where}")
    print(f"  stack   fastblocks {v['fastblocks']}, torch {v['torch']}, triton {v['triton'] or '-'}, "
          f"python {v['python']}")
    print(f"  parity: fp32, forward and every gradient, torch.testing.assert_close defaults; "
          f"times: median, fastblocks backend 'auto'")
    print(flush=True)
    budget = Budget.quick()
    head = ["op", "shape", "auto ->", "fwd err", "grad err", "parity", "eager fwd", "fb fwd", "x",
            "eager f+b", "fb f+b", "x"]
    table, problems, missing, mismatches = [head], [], [], []
    fwd_speedups, bwd_speedups = [], []
    for name, op in REGISTRY.items():
        why = op.missing()
        if why:
            missing.append(name)
            problems.append(f"{name}: not available: {why}")
            continue
        try:
            shape = op.demo_shape(device.type)
            case = op.case(shape, torch.float32, "nchw", "fwd", device)
            args_ = case.make_inputs(0)
            backend = resolved_backend(case, "auto")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fastblocks.backend("auto"):
                    res = parity.check(case.fast, case.eager, args_, case.grad_idx, names=case.arg_names)
            ok = res.ok
            if not ok:
                mismatches.append(name)
                problems.append(f"{name}: {'; '.join(res.messages)}")
            times = {}
            for mode in ("fwd", "fwd+bwd"):
                c = op.case(shape, torch.float32, "nchw", mode, device)
                for prov in ("eager", "fastblocks:auto"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        times[mode, prov] = time_one(c, prov, budget)["median_us"]
        except Exception as exc:
            problems.append(f"{name}: failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            mismatches.append(name)
            table.append([name, "", "", "", "", "ERROR", "", "", "", "", "", ""])
            continue
        sf = times["fwd", "eager"] / times["fwd", "fastblocks:auto"]
        sb = times["fwd+bwd", "eager"] / times["fwd+bwd", "fastblocks:auto"]
        fwd_speedups.append(sf)
        bwd_speedups.append(sb)
        table.append([name, shape.label, backend, _fmt_err(res.fwd_err), _fmt_err(res.bwd_err),
                      "ok" if ok else "MISMATCH",
                      f"{times['fwd', 'eager']:.1f} µs", f"{times['fwd', 'fastblocks:auto']:.1f} µs", f"{sf:.2f}",
                      f"{times['fwd+bwd', 'eager']:.1f} µs", f"{times['fwd+bwd', 'fastblocks:auto']:.1f} µs",
                      f"{sb:.2f}"])
    _print_table(table, right={3, 4, 6, 7, 8, 9, 10, 11})
    for p in problems:
        print(f"  ! {p}")
    n = len(fwd_speedups)
    if n:
        def geo(xs):
            return math.exp(sum(math.log(x) for x in xs) / len(xs))
        n_ok = sum(row[5] == "ok" for row in table[1:])
        verdict = (f"verdict: {n_ok}/{len(table) - 1} ops match eager "
                   f"(forward and backward); fastblocks is faster than eager on "
                   f"{sum(s > 1 for s in fwd_speedups)}/{n} forward, {sum(s > 1 for s in bwd_speedups)}/{n} "
                   f"fwd+bwd (geomean {geo(fwd_speedups):.2f}x / {geo(bwd_speedups):.2f}x)")
    else:
        verdict = "verdict: no op could run"
    if mismatches:
        verdict += f"; MISMATCH or error in {', '.join(mismatches)}"
    if missing:
        verdict += f"; not available: {', '.join(missing)}"
    print(verdict)
    return 1 if mismatches else 0


def _print_table(rows, right=frozenset()):
    widths = [max(len(str(r[i])) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        cells = [str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(r)]
        print("  ".join(cells).rstrip())
        if j == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


# ---- fastblocks verify -----------------------------------------------------------------------

def cmd_verify(args) -> int:
    import torch

    import fastblocks
    from . import testing as parity
    from .bench.cases import DTYPE_SHORT, REGISTRY
    from .bench.harness import _why_backend

    ops, _ = _resolve_ops(args.op, required=False)
    if args.device:
        devices = [_device(args.device)]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    wanted = args.backend or ["triton", "cuda", "cpu"]
    print("fastblocks verify: parity with eager PyTorch on a seeded fuzz, forward and every gradient")
    print("  fp32/fp64: torch.testing.assert_close defaults; fp16/bf16: max error vs an fp32 "
          f"reference <= {parity.LOWP_FACTOR:g}x eager's own")
    print(flush=True)
    rows = [["op", "device", "backend", "dtype", "result"]]
    n_pass = n_fail = n_skip = 0
    failures = []
    for name in ops:
        op = REGISTRY[name]
        why = op.missing()
        if why:
            rows.append([name, "-", "-", "-", f"skipped: {why}"])
            n_skip += 1
            continue
        for dev in devices:
            dtypes = args.dtype or ([torch.float32, torch.float64] if dev.type == "cpu"
                                    else [torch.float32, torch.float16, torch.bfloat16])
            for backend in wanted:
                if not args.backend and backend == {"cpu": "cuda", "cuda": "cpu"}[dev.type]:
                    continue  # the cuda backend never runs CPU tensors, nor cpu CUDA ones
                reason = _why_backend(backend, dev.type, op.c_ops)
                if reason:
                    rows.append([name, dev.type, backend, "-", f"skipped: {reason}"])
                    n_skip += 1
                    continue
                for dtype in dtypes:
                    bad, worst_f, worst_b, n = [], 0.0, 0.0, 0
                    try:
                        cases = op.fuzz(dev, dtype, seed=args.seed)
                    except Exception as exc:
                        cases, bad = [], [("fuzz inputs", f"{type(exc).__name__}: {exc}")]
                    for fc in cases:
                        n += 1
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                with fastblocks.backend(backend):
                                    res = parity.check(fc.fast, fc.eager, fc.args, fc.grad_idx, seed=args.seed,
                                                       names=fc.arg_names)
                        except Exception as exc:
                            text = str(exc).strip().splitlines()
                            bad.append((fc.label, f"{type(exc).__name__}: {text[0] if text else ''}"[:200]))
                            continue
                        worst_f = max(worst_f, res.fwd_err)
                        worst_b = max(worst_b, res.bwd_err or 0.0)
                        if not res.ok:
                            bad.append((fc.label, "; ".join(res.messages)[:200]))
                    if bad:
                        n_fail += 1
                        rows.append([name, dev.type, backend, DTYPE_SHORT[dtype],
                                     f"FAIL {len(bad)}/{n} configs"])
                        by_msg: dict[str, list[str]] = {}
                        for lbl, msg in bad:
                            by_msg.setdefault(msg, []).append(lbl)
                        for msg, labels in by_msg.items():
                            more = f" and {len(labels) - 2} more" if len(labels) > 2 else ""
                            failures.append(f"{name} {dev.type} {backend} {DTYPE_SHORT[dtype]}: {msg}\n"
                                            f"      configs: {'; '.join(labels[:2])}{more}")
                    else:
                        n_pass += 1
                        rows.append([name, dev.type, backend, DTYPE_SHORT[dtype],
                                     f"pass ({n} configs; max err fwd {_fmt_err(worst_f)}, grad {_fmt_err(worst_b)})"])
    _print_table(rows)
    for f in failures:
        print(f"  FAIL {f}")
    print(f"verify: {n_pass} passed, {n_fail} failed, {n_skip} skipped")
    return 1 if n_fail else 0


# ---- parser ----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 and a message, as argparse does, plus a hint
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastblocks", description="Fast, exact CNN building blocks: info, demo, verify, bench.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("info", help="versions, device, backends and what `auto` picks")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("list", help="benchmark ops and their shape sets")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("demo", help="parity and speed of every op family on this device (< 1 min)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is here, else cpu")
    s.add_argument("--threads", type=_positive_int,
                   help="CPU threads (default: torch's, or 1 when other processes hold the cores)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("verify", help="parity with eager on a small fuzz; exit code 1 on any failure")
    s.add_argument("--op", action="append", metavar="NAME", help="op name (repeatable, or 'all'; default all)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu, and cuda if a GPU is here")
    s.add_argument("--backend", action="append", choices=["triton", "cuda", "cpu", "torch"],
                   help="backend(s) to check (default: the kernel backends triton, cuda, cpu)")
    s.add_argument("--dtype", action="append", type=_dtype,
                   help="default: float32 + float64 on CPU; float32, float16, bfloat16 on CUDA")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_verify)

    b = sub.add_parser("bench", help="benchmarks: `bench ops`, `bench list`")
    bsub = b.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=_Parser)
    s = bsub.add_parser("list", help="ops and shape sets")
    s.set_defaults(func=cmd_list)
    s = bsub.add_parser(
        "ops", help="time ops vs eager and torch.compile",
        description="Time ops against eager PyTorch and torch.compile; print a table, write "
                    "<out>/<device-slug>/<name>.json and a PNG beside it.")
    s.add_argument("--op", action="append", metavar="NAME", help="op name (repeatable, comma lists, or 'all')")
    s.add_argument("--dtype", action="append", type=_dtype, help="float32 (default), float16, bfloat16, float64")
    s.add_argument("--layout", action="append", choices=["nchw", "channels_last"], help="default nchw")
    s.add_argument("--mode", action="append", choices=["fwd", "fwd+bwd"], help="default fwd")
    s.add_argument("--batch", action="append", type=_positive_int,
                   help="batch size(s) for layer shapes (default: per op; 1 on CPU)")
    s.add_argument("--shapes", action="append", metavar="SET", help="shape set(s); see `fastblocks bench list`")
    s.add_argument("--providers", action="append", metavar="P",
                   help="eager, compile, compile-max-autotune, fastblocks:{triton,cuda,cpu,auto,torch} "
                        "(or just triton/cuda/cpu/auto); repeatable or comma-separated")
    s.add_argument("--max-autotune", action="store_true", help="add compile-max-autotune to the providers")
    s.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is here, else cpu")
    s.add_argument("--threads", type=_positive_int, help="CPU threads (torch.set_num_threads) for the run")
    s.add_argument("--graphs", choices=["batch1", "always", "never"], default="batch1",
                   help="CUDA-graph timing: batch-1 cases (default), every case, or none")
    s.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    s.add_argument("--system-malloc", action="store_true",
                   help="CPU: keep glibc's default malloc (default: the command re-runs itself with "
                        "freed memory kept for reuse; see bench/README.md)")
    s.add_argument("--out", default=os.path.join("bench", "results"), metavar="DIR",
                   help="results root (default bench/results): writes DIR/<device-slug>/<name>.json")
    s.add_argument("--name", help="results file name (default ops-<ops> or ops-all)")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_bench_ops)
    b.set_defaults(func=lambda a: _help(b))
    p.set_defaults(func=lambda a: _help(p))
    return p


def _help(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None  # a process of its own: may re-exec itself (bench ops)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2)
        return int(exc.code or 0)
    args.argv = argv
    args.from_command_line = from_command_line
    try:
        return int(args.func(args) or 0)
    except _UsageError as exc:
        print(f"fastblocks: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastblocks ... | head`: stop quietly (as the Python docs advise)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
