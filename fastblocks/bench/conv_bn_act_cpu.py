"""CPU inference of conv -> BN -> activation: fastblocks vs eager vs torch.compile with freezing.

    python -m fastblocks.bench.conv_bn_act_cpu [--batch 1 8] [--layout channels_last]
        [--nets resnet50 mobilenet_v2 efficientnet_b0] [--no-compile] [--out FILE.json]

Per layer of ``shapes.CONV_BN_ACT_NETS`` (the conv-BN-act layers of ResNet-50, MobileNetV2 and
EfficientNet-B0 at 224x224), fp32, eval mode, under ``torch.no_grad``:

- ``eager``: ``nn.Sequential(conv, bn, act).eval()`` (three ATen ops);
- ``fastblocks``: ``fastblocks.nn.ConvBNAct.from_modules`` of the same modules (BN folded and
  cached, oneDNN convolution with fused post-op on a weight packed once);
- ``compile``: ``torch.compile`` of the Sequential with ``torch._inductor.config.freezing``
  (inductor folds BN, prepacks the oneDNN weight and fuses the post-op).

The providers alternate call by call (about ``--budget`` seconds of calls per layer), so each
ratio is taken in one process under the same load; the median per call is reported
(``--stat p10``: the fastest decile, for a machine shared with other jobs).
Outputs are checked against eager (assert_close defaults) before timing.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
from torch import nn

from fastblocks.bench import shapes as S
from fastblocks.nn import ConvBNAct

_ACTS = {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU,
         "hardswish": nn.Hardswish}


def build(layer: S.ConvBNActLayer) -> nn.Sequential:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                     layer.padding, bias=False)
    bn = nn.BatchNorm2d(layer.out_channels)
    with torch.no_grad():  # non-trivial statistics, so the fold is not an identity
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
    return nn.Sequential(conv, bn, _ACTS[layer.activation]()).eval()


def _call_time(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def _calls_for(fns, x, budget_s: float) -> int:
    """Interleaved calls per provider: about `budget_s` of work in all, 10 to 400."""
    t = sum(_call_time(fn, x) for fn in fns)
    return max(10, min(400, int(budget_s / max(t, 1e-6))))


def _stat(values, stat: str) -> float:
    if stat == "median":
        return statistics.median(values)
    values = sorted(values)
    return values[len(values) // 10]


def run_layer(layer, batch: int, layout: str, use_compile: bool, budget_s: float,
              stat: str = "median") -> dict:
    seq = build(layer)
    fused = ConvBNAct.from_modules(seq[0], seq[1], seq[2], names=("0", "1", "2")).eval()
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    providers = {"eager": seq, "fastblocks": fused}
    if use_compile:
        torch._dynamo.reset()
        torch._inductor.config.freezing = True
        providers["compile"] = torch.compile(seq, dynamic=False)
    times: dict[str, list[float]] = {p: [] for p in providers}
    with torch.no_grad():
        ref = seq(x)
        for name, fn in providers.items():
            torch.testing.assert_close(fn(x), ref, msg=lambda m: f"{name} {layer}: {m}")
        for fn in providers.values():  # warm-up (packing, first-call allocations)
            fn(x)
        for _ in range(_calls_for(providers.values(), x, budget_s)):
            for name, fn in providers.items():
                times[name].append(_call_time(fn, x))
    med = {p: _stat(v, stat) * 1e6 for p, v in times.items()}
    row = {"net": layer.net, "source": layer.source, "batch": batch, "layout": layout,
           "shape": f"{batch}x{layer.in_channels}x{layer.size}x{layer.size} "
                    f"k{layer.kernel} s{layer.stride} ->{layer.out_channels} {layer.activation}",
           "us": med, "speedup_vs_eager": med["eager"] / med["fastblocks"]}
    if "compile" in med:
        row["speedup_vs_compile"] = med["compile"] / med["fastblocks"]
        row["compile_vs_eager"] = med["eager"] / med["compile"]
    return row


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    ap.add_argument("--nets", nargs="+", default=list(S.CONV_BN_ACT_NETS))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per layer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stat", choices=("median", "p10"), default="median",
                    help="per-call statistic; p10 (fastest decile) on a machine shared with "
                         "other jobs, where preemption puts whole time slices into a median")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for batch in args.batch:
        for net in args.nets:
            for layer in S.CONV_BN_ACT_NETS[net]:
                row = run_layer(layer, batch, args.layout, not args.no_compile, args.budget,
                                args.stat)
                rows.append(row)
                us = "  ".join(f"{k} {v:9.1f}" for k, v in row["us"].items())
                extra = f"  vs compile {row['speedup_vs_compile']:.2f}x" if "speedup_vs_compile" in row else ""
                print(f"{row['shape']:<40} {us}  vs eager {row['speedup_vs_eager']:.2f}x{extra}",
                      flush=True)
    summary = {"geomean_vs_eager": geomean(r["speedup_vs_eager"] for r in rows)}
    if not args.no_compile:
        summary["geomean_vs_compile"] = geomean(r["speedup_vs_compile"] for r in rows)
        summary["geomean_compile_vs_eager"] = geomean(r["compile_vs_eager"] for r in rows)
        summary["slower_than_compile"] = sum(r["speedup_vs_compile"] < 1 for r in rows)
    summary["slower_than_eager"] = sum(r["speedup_vs_eager"] < 1 for r in rows)
    print(json.dumps(summary, indent=1))
    if args.out:
        meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                "threads": args.threads, "layout": args.layout, "dtype": "float32",
                "stat": args.stat}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
