"""`fastblocks bench ops`: time ops against eager PyTorch and torch.compile."""
from __future__ import annotations

import os
import sys
import time
from typing import Sequence

from ._common import UsageError, device_arg, dtype_arg, positive_int, reexec_with_reused_memory

def resolve_ops(names: Sequence[str] | None, required: bool) -> tuple[list[str], bool]:
    from ..bench.cases import REGISTRY
    if not names:
        if required:
            raise UsageError("name an op with --op NAME (or --op all); `fastblocks bench list` lists them")
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
                from ..models._registry import did_you_mean
                hint = did_you_mean(part, REGISTRY)
                raise UsageError(f"unknown op {part!r}" + (
                    f"{hint} (`fastblocks bench list` lists all)" if hint
                    else f"; registered ops: {', '.join(REGISTRY)}, or 'all'"))
    return list(dict.fromkeys(out)), all_ops


def cmd_bench_ops(args) -> int:
    from ..bench import harness
    from ..bench.cases import REGISTRY

    ops, all_ops = resolve_ops(args.op, required=True)
    device = device_arg(args.device)
    if device.type == "cpu" and not args.system_malloc and args.from_command_line:
        reexec_with_reused_memory()
    providers = None
    if args.providers:
        try:
            providers = [harness.normalize_provider(p) for item in args.providers for p in item.split(",") if p]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
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
            raise UsageError(f"unknown shape set(s) {', '.join(bad)} for {', '.join(ops)}; "
                              f"choose from {', '.join(sorted(known))}")
    cfg = harness.BenchConfig(
        ops=ops, dtypes=list(dict.fromkeys(args.dtype or [dtype_arg("float32")])),
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


def add_parser(bsub) -> None:
    s = bsub.add_parser(
        "ops", help="time ops vs eager and torch.compile",
        description="Time ops against eager PyTorch and torch.compile; print a table, write "
                    "<out>/<device-slug>/<name>.json and a PNG beside it.")
    s.add_argument("--op", action="append", metavar="NAME", help="op name (repeatable, comma lists, or 'all')")
    s.add_argument("--dtype", action="append", type=dtype_arg, help="float32 (default), float16, bfloat16, float64")
    s.add_argument("--layout", action="append", choices=["nchw", "channels_last"], help="default nchw")
    s.add_argument("--mode", action="append", choices=["fwd", "fwd+bwd"], help="default fwd")
    s.add_argument("--batch", action="append", type=positive_int,
                   help="batch size(s) for layer shapes (default: per op; 1 on CPU)")
    s.add_argument("--shapes", action="append", metavar="SET", help="shape set(s); see `fastblocks bench list`")
    s.add_argument("--providers", action="append", metavar="P",
                   help="eager, compile, compile-max-autotune, fastblocks:{triton,cuda,cpu,auto,torch} "
                        "(or just triton/cuda/cpu/auto); repeatable or comma-separated")
    s.add_argument("--max-autotune", action="store_true", help="add compile-max-autotune to the providers")
    s.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is here, else cpu")
    s.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads) for the run")
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
