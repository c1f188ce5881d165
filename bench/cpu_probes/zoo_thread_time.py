"""CPU probe behind the zoo sweep of the README (issue 13: "no zoo model slower than eager under
`auto`"): every zoo model (or those named), plain vs ``fastblocks.optimize`` (the ``auto``
policy), fp32, eval, 1 thread, NCHW input, in ONE process. Each round calls eager then
fastblocks then fastblocks then eager (ABBA, so neither side always runs second), and the
time of a call is its thread CPU time (time.thread_time): on a VM shared with other jobs this
moves far less than wall time, since time the thread is not running is not counted. Prints and
appends one JSON line per model: medians in ms, the ratio eager / fastblocks of the medians,
and the median of the per-round ratios (robust to slow drift). ``--control REPS``: a third
model, an identical copy of the eager one, joins the rotation (eager, fastblocks, copy), so
each model's own noise floor (eager / copy) is measured in the same process.

Run it as `fastblocks bench models` does, with its allocator settings (fastblocks/bench/env.py):
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184 \\
    python bench/cpu_probes/zoo_thread_time.py --batch 1 --out FILE.jsonl [--models a,b]

Inputs: the model's native size, except the large models of the old sweep (LARGE, 160x160,
to keep the sweep within minutes; vit_b_16 refuses 160 and keeps 224)."""
import argparse
import copy
import gc
import json
import statistics
import time

import torch

import fastblocks
from fastblocks.models import create_model, list_models, model_info

LARGE = {"densenet161", "densenet201", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
         "inception_resnet_v2", "inception_v4", "preact_resnet101", "preact_resnet152",
         "resnet101", "resnet152", "resnext101_32x4d", "resnext101_64x4d", "stacked_hourglass",
         "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
         "vovnet57", "wide_resnet50_2", "xception"}


def thread_ms(model, x):
    t0 = time.thread_time()
    model(x)
    return (time.thread_time() - t0) * 1e3


def measure_with_control(name, batch, reps):
    """eager, fastblocks and a second copy of the eager model (the control: two identical
    models whose ratio shows this process's noise floor), called in rotating order."""
    c, h, w = model_info(name).input_size
    if name in LARGE:
        h = w = 160
    torch.manual_seed(0)
    eager = create_model(name, fused=False).eval()
    models = {"eager": eager, "fastblocks": fastblocks.optimize(copy.deepcopy(eager)),
              "control": copy.deepcopy(eager)}
    x = torch.randn(batch, c, h, w)
    times = {k: [] for k in models}
    order = list(models)
    with torch.no_grad():
        for m in list(models.values()) * 2:
            m(x)
        for i in range(reps):
            for k in order[i % 3:] + order[:i % 3]:
                times[k].append(thread_ms(models[k], x))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "batch": batch, "input": [c, h, w], "reps": reps,
            "eager_ms": round(med["eager"], 3), "fastblocks_ms": round(med["fastblocks"], 3),
            "control_ms": round(med["control"], 3),
            "ratio": round(med["eager"] / med["fastblocks"], 4),
            "control_ratio": round(med["control"] / med["fastblocks"], 4),
            "eager_over_control": round(med["eager"] / med["control"], 4)}


def measure(name, batch, budget_s, min_reps, max_reps):
    c, h, w = model_info(name).input_size
    if name in LARGE:
        h = w = 160
    torch.manual_seed(0)
    eager = create_model(name, fused=False).eval()
    fast = fastblocks.optimize(copy.deepcopy(eager))
    x = torch.randn(batch, c, h, w)
    te, tf = [], []
    with torch.no_grad():
        for m in (eager, fast, eager, fast):  # warm-up: caches, folded BN, layout decisions
            m(x)
        first = thread_ms(eager, x) / 1e3
        reps = max(min_reps, min(max_reps, int(budget_s / max(first, 1e-4) / 2)))
        for _ in range(reps):
            a = thread_ms(eager, x)
            b = thread_ms(fast, x)
            b2 = thread_ms(fast, x)
            a2 = thread_ms(eager, x)
            te += [a, a2]
            tf += [b, b2]
    me, mf = statistics.median(te), statistics.median(tf)
    pair = statistics.median(e / f for e, f in zip(te, tf))
    report = getattr(fast, "fastblocks_report", None)  # optimize()'s Report
    return {"model": name, "batch": batch, "input": [c, h, w], "reps": 2 * reps,
            "eager_ms": round(me, 3), "fastblocks_ms": round(mf, 3), "ratio": round(me / mf, 4),
            "pair_ratio": round(pair, 4),
            "eager_p25_p75": [round(v, 3) for v in statistics.quantiles(te, n=4)[::2]],
            "fastblocks_p25_p75": [round(v, 3) for v in statistics.quantiles(tf, n=4)[::2]],
            "swapped": str(report.counts() if hasattr(report, "counts") else "")[:200]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--models", help="comma-separated names (default: all of fastblocks list)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of eager time per model")
    p.add_argument("--min-reps", type=int, default=4)
    p.add_argument("--max-reps", type=int, default=25)
    p.add_argument("--out", help="append JSON lines here")
    p.add_argument("--control", type=int, metavar="REPS",
                   help="instead: eager, fastblocks and an identical eager copy, REPS rounds")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = args.models.split(",") if args.models else list_models()
    for name in names:
        if args.control:
            r = measure_with_control(name, args.batch, args.control)
            print(f"{name:28s} b{args.batch} eager {r['eager_ms']:9.2f} fastblocks "
                  f"{r['fastblocks_ms']:9.2f} control {r['control_ms']:9.2f}  {r['ratio']:6.3f}x "
                  f"(control/fastblocks {r['control_ratio']:.3f}x, eager/control "
                  f"{r['eager_over_control']:.3f})", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
            continue
        r = measure(name, args.batch, args.budget, args.min_reps, args.max_reps)
        print(f"{name:28s} b{args.batch} {r['eager_ms']:9.2f} {r['fastblocks_ms']:9.2f} "
              f"{r['ratio']:6.3f}x pair {r['pair_ratio']:6.3f}x  reps {r['reps']}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
        gc.collect()


if __name__ == "__main__":
    main()
