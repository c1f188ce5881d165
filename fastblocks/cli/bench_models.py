"""`fastblocks bench models`: images/s, latency and peak memory of whole models under eager,
torch.compile, fastblocks and fastblocks + compile (fastblocks/bench/models.py)."""
from __future__ import annotations

import os

from ._common import (UsageError, device_arg, dtype_arg, positive_int, reexec_with_reused_memory,
                      timing_threads)
from ._model_spec import MODEL_HELP, check_zoo_name, load_model


def cmd_bench_models(args) -> int:
    import torch

    from ..bench import harness
    from ..bench import models as mb
    from ..bench.timing import Budget

    device = device_arg(args.device)
    if device.type == "cpu" and not args.system_malloc and args.from_command_line:
        reexec_with_reused_memory()
    note = timing_threads(device, args.threads)
    if note:
        print(f"CPU{note}")
    providers = tuple(args.providers.split(",")) if args.providers else mb.PROVIDERS
    bad = [p for p in providers if p not in mb.PROVIDERS]
    if bad:
        raise UsageError(f"unknown provider(s) {', '.join(bad)}; choose from {', '.join(mb.PROVIDERS)}")
    names = args.model.split(",")
    for name in names:  # fail early on a bad name (zoo names are checked without building)
        if name.startswith("hf:") or ":" in name:
            continue
        check_zoo_name(name)
    written = []
    for name in names:
        spec = load_model(name)
        size = spec.input_size if not args.size else (spec.input_size[0], args.size, args.size)
        budget = Budget(warmup_ms=100, rep_ms=1000, min_reps=5, max_reps=100, cpu_warmup_s=0.2,
                        cpu_rep_s=1.0, cpu_min_reps=3, cpu_max_reps=50) if args.quick else None
        cfg = mb.ModelBenchConfig(
            name=spec.label, make_model=lambda spec=spec: spec.model, input_size=size,
            batch=args.batch, dtype=args.dtype or torch.float32, train=args.train,
            channels_last=args.channels_last, device=device, providers=providers, budget=budget,
            threads=None, progress=False if args.no_progress else None)
        results = mb.run(cfg)
        results["command"] = "fastblocks " + " ".join(args.argv)
        print(mb.format_table(results))
        mode = "train" if args.train else "eval"
        dt = results["settings"]["dtype"].replace("bfloat16", "bf16").replace("float", "fp")
        fname = (f"models-{spec.label.replace(':', '-')}-b{args.batch}-{dt}-{mode}"
                 + ("-cl" if args.channels_last else ""))
        if args.name:  # one file per model: the name is a prefix when several are timed
            fname = args.name if "," not in args.model else f"{args.name}-{spec.label.replace(':', '-')}"
        paths = harness.save(results, args.out, fname, plot=False)
        if not args.no_plot:
            mb.plot(results, os.path.splitext(paths["json"])[0] + ".png")
        written.append(paths["json"])
        print()
    for p in written:
        print(f"results: {os.path.abspath(p)}")
    return 0


def add_parser(bsub) -> None:
    s = bsub.add_parser(
        "models", help="time whole models: eager, torch.compile, fastblocks, fastblocks + compile",
        description="Images/s, latency (median, p90) and peak memory of whole models; writes "
                    "<out>/<device-slug>/<name>.json and a PNG beside it.")
    s.add_argument("--model", required=True,
                   help="comma-separated MODELs, each a " + MODEL_HELP)
    s.add_argument("--batch", type=positive_int, default=8, help="batch size (default 8)")
    s.add_argument("--dtype", type=dtype_arg, help="float32 (default), bfloat16, float16 (train: AMP)")
    s.add_argument("--train", action="store_true", help="time a training step (fwd + bwd + SGD)")
    s.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    s.add_argument("--size", type=positive_int, help="input height = width (default: the model's native)")
    s.add_argument("--providers", help=f"comma-separated subset of {','.join(('eager', 'compile', 'fastblocks', 'fastblocks+compile'))}")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is here, else cpu")
    s.add_argument("--threads", type=positive_int, help="CPU threads for the run")
    s.add_argument("--quick", action="store_true", help="shorter timing")
    s.add_argument("--system-malloc", action="store_true", help="CPU: keep glibc's default malloc")
    s.add_argument("--out", default=os.path.join("bench", "results"), metavar="DIR",
                   help="results root (default bench/results)")
    s.add_argument("--name", help="results file name")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_bench_models)
