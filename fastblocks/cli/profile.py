"""`fastblocks profile MODEL`: per block, parameters, FLOPs, bytes moved, measured time (eager
and optimized), share of the total, and the fastblocks modules serving it; a table and a PNG
of time against FLOPs and bytes (fastblocks/bench/profile.py)."""
from __future__ import annotations

import os

from ._common import device_arg, dtype_arg, positive_int, print_table, timing_threads
from ._model_spec import MODEL_HELP, load_model


def _si(v: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit}"
    return f"{v:.0f} {unit}"


# A block whose middle half of reps spans more than this fraction of its median is too noisy
# to compare: 25% is well above the 2-10% of an idle CPU, below the swings of a loaded one.
NOISY_SPREAD = 0.25


def cmd_profile(args) -> int:
    import torch

    from ..bench import env
    from ..bench.profile import plot, profile_model

    device = device_arg(args.device)
    spec = load_model(args.model)
    c, h, w = spec.input_size
    if args.size:
        h = w = args.size
    dtype = args.dtype or torch.float32
    model = spec.model.to(device=device, dtype=dtype)
    x = torch.randn(args.batch, c, h, w, device=device, dtype=dtype)
    note = timing_threads(device, args.threads)
    blocks, totals = profile_model(model, x, depth=args.depth, reps=args.reps)
    info = env.device_info(device)
    threads = torch.get_num_threads()
    print(f"fastblocks profile {spec.label}: input {args.batch}x{c}x{h}x{w} "
          f"{str(dtype).replace('torch.', '')}, eval, on {info['name']} ({threads} thread{'s' if threads != 1 else ''}){note}")
    print(f"  time: median of {args.reps} forwards, eager and fastblocks in turn, of forward hooks "
          "around each block (host clock; device synchronized); served by: optimize()'s patterns; "
          "bytes: inputs + outputs + weights of each leaf module")
    rows = [["block", "type", "params", "FLOPs", "bytes", "eager ms", "share", "fastblocks ms", "x", "served by"]]
    total_block_ms = sum(b.eager_ms for b in blocks if b.eager_ms == b.eager_ms) or 1.0
    for b in blocks:
        fb = b.fastblocks_ms
        rows.append([b.name, b.kind, _si(b.params, ""), _si(b.flops, "FLOP"), _si(b.bytes, "B"),
                     f"{b.eager_ms:.3f}", f"{100 * b.eager_ms / total_block_ms:.1f}%",
                     "-" if fb is None else f"{fb:.3f}",
                     "-" if not fb else f"{b.eager_ms / fb:.2f}",
                     ", ".join(b.kernels) or "eager (no fastblocks kernel)"])
    print_table(rows, right={2, 3, 4, 5, 6, 7, 8})
    noisy = [b for b in blocks if b.spread > NOISY_SPREAD]
    if noisy:
        worst = max(noisy, key=lambda b: b.spread)
        print(f"warning: noisy timing: {len(noisy)} of {len(blocks)} blocks have a run-to-run spread "
              f"over {NOISY_SPREAD:.0%} (worst {worst.name}: {worst.spread:.0%}; spread = "
              "interquartile range / median of a block's reps), so their ms and x columns are "
              "unreliable; trust the whole-forward line, or rerun with more --reps on a quieter machine")
    fb_total = totals["fastblocks_ms"]
    print(f"whole forward: eager {totals['eager_ms']:.2f} ms"
          + (f", fastblocks {fb_total:.2f} ms ({totals['eager_ms'] / fb_total:.2f}x)" if fb_total else "")
          + f"; {_si(totals['params'], '')} params, {_si(totals['flops'], 'FLOP')}, "
          f"{_si(totals['bytes'], 'B')} moved by eager's leaves")
    if not args.no_plot:
        folder = os.path.join(args.out, info["slug"])
        os.makedirs(folder, exist_ok=True)
        path = plot(blocks, f"{spec.label} b{args.batch} on {info['name'][:40]}",
                    os.path.join(folder, f"profile-{spec.label.replace(':', '-')}.png"))
        print(f"plot: {os.path.abspath(path)}")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("profile", help="per-block parameters, FLOPs, bytes and time of a model")
    s.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    s.add_argument("--batch", type=positive_int, default=1)
    s.add_argument("--size", type=positive_int, help="input height = width (default: native)")
    s.add_argument("--dtype", type=dtype_arg, help="default float32")
    s.add_argument("--depth", type=positive_int, default=2, help="block depth below the root (default 2)")
    s.add_argument("--reps", type=positive_int, default=15,
                   help="timed forwards of each model, eager and fastblocks run in turn (default 15); "
                        "a warning names blocks whose spread (interquartile range / median of their "
                        f"reps) exceeds {NOISY_SPREAD * 100:.0f}%%, whose ratios are then noise")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is here, else cpu")
    s.add_argument("--threads", type=positive_int, help="CPU threads")
    s.add_argument("--out", default=os.path.join("bench", "results"), metavar="DIR",
                   help="the PNG goes to DIR/<device-slug>/profile-<model>.png")
    s.add_argument("--no-plot", action="store_true")
    s.set_defaults(func=cmd_profile)
