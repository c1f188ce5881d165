"""CPU inference of conv -> BN -> activation: fastblocks vs eager vs torch.compile with freezing.

    python -m fastblocks.bench.conv_bn_act_cpu [--batch 1 32] [--layout channels_last]
        [--nets resnet50 mobilenet_v2 efficientnet_b0] [--no-compile] [--train] [--out FILE.json]

Per layer of ``shapes.CONV_BN_ACT_NETS`` (the conv-BN-act layers of ResNet-50, MobileNetV2 and
EfficientNet-B0 at 224x224), fp32, eval mode, under ``torch.no_grad``:

- ``eager``: ``nn.Sequential(conv, bn, act).eval()`` (three ATen ops);
- ``fastblocks``: ``fastblocks.nn.ConvBNAct.from_modules`` of the same modules (BN folded and
  cached, oneDNN convolution with fused post-op on a weight packed once);
- ``compile``: ``torch.compile`` of the Sequential with ``torch._inductor.config.freezing``
  (inductor folds BN, prepacks the oneDNN weight and fuses the post-op);
- the fusion bound's bare convolutions (``--no-bound`` drops them): ``conv``, eager's own
  ``conv`` module alone (ATen's convolution: oneDNN on a plain weight for channels_last), and
  ``conv_packed``, the folded conv with its bias on the weight packed once, without a post-op
  (oneDNN's primitive as ``ops._mkldnn_conv`` runs it; channels_last only, where it serves).
  Fusing BN and the activation into a conv removes their passes and nothing else, so no
  fused chain on these convolutions beats ``bound = eager / min(conv, conv_packed)``.

The providers alternate call by call, in a rotating order (about ``--budget`` seconds of calls
per layer), so each ratio is taken in one process under the same load; the median per call is
reported (``--stat p10``: the fastest decile, for a machine shared with other jobs).
``--train``: training forward + backward instead (``run_layer_train``): eager, fastblocks under
``auto`` and under ``backend("cpu")``, time and the bytes autograd saves for backward.

Outputs are checked against eager (assert_close defaults) before timing. The command re-runs
itself with glibc's malloc keeping freed memory for reuse (as ``fastblocks bench`` does,
fastblocks.cli._common.reexec_with_reused_memory says why): otherwise a batch-32 output
page-faults on every call and eager, which allocates three of them, is measured on that.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import statistics
import time

import torch
from torch import nn

from fastblocks.bench import env, shapes as S
from fastblocks.nn import ConvBNAct
from fastblocks.ops import _mkldnn_conv
from fastblocks.testing import compare

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


def _packed_conv(fused: ConvBNAct, x: torch.Tensor):
    """The folded conv + bias alone on oneDNN's packed weight (no post-op), or None where the
    oneDNN primitive does not serve x."""
    conv = fused.conv
    with torch.no_grad():
        fused(x)  # builds the fold cache
    _, weight, bias = fused.__dict__["_fold_cache"]
    if not (x.is_contiguous(memory_format=torch.channels_last)
            and _mkldnn_conv.can_serve(x, weight)):
        return None
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups, 0)
    return lambda t: _mkldnn_conv.conv_pointwise(t, weight, bias, *args)


def run_layer(layer, batch: int, layout: str, use_compile: bool, budget_s: float,
              stat: str = "median", bound: bool = True) -> dict:
    seq = build(layer)
    fused = ConvBNAct.from_modules(seq[0], seq[1], seq[2], names=("0", "1", "2")).eval()
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    providers = {"eager": seq, "fastblocks": fused}
    if bound:
        providers["conv"] = seq[0]
        packed = _packed_conv(fused, x)
        if packed is not None:
            providers["conv_packed"] = packed
    if use_compile:
        torch._dynamo.reset()
        torch._inductor.config.freezing = True
        providers["compile"] = torch.compile(seq, dynamic=False)
    times: dict[str, list[float]] = {p: [] for p in providers}
    with torch.no_grad():
        ref = seq(x)
        hi = copy.deepcopy(seq).double()(x.double())
        parity = {}
        for name, fn in providers.items():
            if not name.startswith("conv"):  # the tests' rule: error at most 2x eager's
                ok, _, msg = compare(fn(x), ref, hi, reduction=True)
                # ours must pass; compile's miss is recorded (inductor's NCHW 512->512 3x3 at
                # batch 32 ran 10x past eager's float32 error on one element of 802816)
                assert ok or name != "fastblocks", f"{name} {layer}: {msg}"
                if not ok:
                    parity[name] = msg
        for fn in providers.values():  # warm-up (packing, first-call allocations)
            fn(x)
        names = list(providers)
        for i in range(_calls_for(providers.values(), x, budget_s)):
            # the order rotates round by round: the provider called right after another meets
            # the caches and freed buffers it left (a fixed order put up to 30% on one provider)
            for name in names[i % len(names):] + names[:i % len(names)]:
                times[name].append(_call_time(providers[name], x))
    med = {p: _stat(v, stat) * 1e6 for p, v in times.items()}
    row = {"net": layer.net, "source": layer.source, "batch": batch, "layout": layout,
           "shape": f"{batch}x{layer.in_channels}x{layer.size}x{layer.size} "
                    f"k{layer.kernel} s{layer.stride} ->{layer.out_channels} {layer.activation}",
           "us": med, "speedup_vs_eager": med["eager"] / med["fastblocks"]}
    if parity:
        row["parity_failed"] = parity
    if "compile" in med:
        row["speedup_vs_compile"] = med["compile"] / med["fastblocks"]
        row["compile_vs_eager"] = med["eager"] / med["compile"]
    if bound:
        bare = min(v for k, v in med.items() if k.startswith("conv"))
        row["bound_vs_eager"] = med["eager"] / bare
        row["fastblocks_vs_bare_conv"] = bare / med["fastblocks"]
    return row


def _saved_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``step()``: the
    activation memory a training step holds between forward and backward (the issue's
    "peak memory" of the block, device-independent; parameters and x included alike)."""
    storages: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(backward=False)
    return sum(storages.values())


def run_layer_train(layer, batch: int, layout: str, budget_s: float, stat: str = "median") -> dict:
    """Training forward + backward of one layer (batch statistics, running statistics
    updated): eager Sequential, fastblocks under ``auto`` (on CPU: eager's composition,
    ops/conv_bn_act.py says why) and under ``backend("cpu")`` (fastblocks._C's kernels, the
    memory-saving backward that keeps only x and the conv output)."""
    import fastblocks
    seq = build(layer).train()
    fused = ConvBNAct.from_modules(*copy.deepcopy(seq), names=("0", "1", "2")).train()
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size, requires_grad=True)
    if layout == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn_like(seq(x))

    def stepper(module, backend):
        def step(backward=True):
            with fastblocks.backend(backend):
                y = module(x)
                if backward:
                    y.backward(g)
            return y
        return step
    providers = {"eager": stepper(seq, "auto"), "fastblocks": stepper(fused, "auto"),
                 "fastblocks_cpu": stepper(fused, "cpu")}
    saved = {name: _saved_bytes(step) for name, step in providers.items()}
    times: dict[str, list[float]] = {p: [] for p in providers}
    names = list(providers)
    for step in providers.values():
        step()
    for i in range(_calls_for([lambda _, s=s: s() for s in providers.values()], x, budget_s)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            providers[name]()
            times[name].append(time.perf_counter() - t0)
    med = {p: _stat(v, stat) * 1e6 for p, v in times.items()}
    return {"net": layer.net, "source": layer.source, "batch": batch, "layout": layout,
            "mode": "train fwd+bwd",
            "shape": f"{batch}x{layer.in_channels}x{layer.size}x{layer.size} "
                     f"k{layer.kernel} s{layer.stride} ->{layer.out_channels} {layer.activation}",
            "us": med, "saved_bytes": saved,
            "speedup_vs_eager": med["eager"] / med["fastblocks"],
            "cpu_kernels_speedup_vs_eager": med["eager"] / med["fastblocks_cpu"],
            "saved_vs_eager": saved["fastblocks"] / saved["eager"],
            "cpu_kernels_saved_vs_eager": saved["fastblocks_cpu"] / saved["eager"]}


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    ap.add_argument("--nets", nargs="+", default=list(S.CONV_BN_ACT_NETS))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-bound", action="store_true", help="skip the bare-conv providers")
    ap.add_argument("--train", action="store_true",
                    help="training forward+backward time and saved-activation bytes instead")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per layer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stat", choices=("median", "p10"), default="median",
                    help="per-call statistic; p10 (fastest decile) on a machine shared with "
                         "other jobs, where preemption puts whole time slices into a median")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if argv is None and not os.environ.get(env.MALLOC_TUNABLES_ENV):
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]],
                  {**os.environ, env.MALLOC_TUNABLES_ENV: env.REUSE_MEMORY_TUNABLES})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.train:
        return _main_train(args)
    rows = []
    for batch in args.batch:
        for net in args.nets:
            for layer in S.CONV_BN_ACT_NETS[net]:
                row = run_layer(layer, batch, args.layout, not args.no_compile, args.budget,
                                args.stat, not args.no_bound)
                rows.append(row)
                us = "  ".join(f"{k} {v:9.1f}" for k, v in row["us"].items())
                extra = f"  vs compile {row['speedup_vs_compile']:.2f}x" if "speedup_vs_compile" in row else ""
                if "bound_vs_eager" in row:
                    extra += f"  bound {row['bound_vs_eager']:.2f}x"
                print(f"{row['shape']:<40} {us}  vs eager {row['speedup_vs_eager']:.2f}x{extra}",
                      flush=True)
    summary = {"geomean_vs_eager": geomean(r["speedup_vs_eager"] for r in rows)}
    if not args.no_compile:
        summary["geomean_vs_compile"] = geomean(r["speedup_vs_compile"] for r in rows)
        summary["geomean_compile_vs_eager"] = geomean(r["compile_vs_eager"] for r in rows)
        summary["slower_than_compile"] = sum(r["speedup_vs_compile"] < 1 for r in rows)
    summary["slower_than_eager"] = sum(r["speedup_vs_eager"] < 1 for r in rows)
    if not args.no_bound:
        summary["geomean_bound_vs_eager"] = geomean(r["bound_vs_eager"] for r in rows)
        summary["geomean_fastblocks_vs_bare_conv"] = geomean(r["fastblocks_vs_bare_conv"]
                                                             for r in rows)
    worst = sorted(rows, key=lambda r: r["speedup_vs_eager"])[:3]
    summary["worst_vs_eager"] = [f"{r['shape']}: {r['speedup_vs_eager']:.2f}x" for r in worst]
    if not args.no_compile:
        worst = sorted(rows, key=lambda r: r["speedup_vs_compile"])[:3]
        summary["worst_vs_compile"] = [f"{r['shape']}: {r['speedup_vs_compile']:.2f}x"
                                       for r in worst]
    print(json.dumps(summary, indent=1))
    if args.out:
        meta = {"torch": torch.__version__, "cpu": env.cpu_model(), **env.git_commit(),
                "load_average_1min": env.load_average(), "malloc": env.cpu_malloc(),
                "threads": args.threads, "layout": args.layout, "dtype": "float32",
                "stat": args.stat}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    return 0


def _main_train(args) -> int:
    rows = []
    for batch in args.batch:
        for net in args.nets:
            for layer in S.CONV_BN_ACT_NETS[net]:
                row = run_layer_train(layer, batch, args.layout, args.budget, args.stat)
                rows.append(row)
                us = "  ".join(f"{k} {v:9.1f}" for k, v in row["us"].items())
                print(f"{row['shape']:<40} {us}  vs eager {row['speedup_vs_eager']:.2f}x "
                      f"(cpu kernels {row['cpu_kernels_speedup_vs_eager']:.2f}x)  saved "
                      f"{row['saved_vs_eager']:.2f}x (cpu kernels "
                      f"{row['cpu_kernels_saved_vs_eager']:.2f}x) of eager", flush=True)
    summary = {k: geomean(r[k] for r in rows) for k in (
        "speedup_vs_eager", "cpu_kernels_speedup_vs_eager", "saved_vs_eager",
        "cpu_kernels_saved_vs_eager")}
    print(json.dumps(summary, indent=1))
    if args.out:
        meta = {"torch": torch.__version__, "cpu": env.cpu_model(), **env.git_commit(),
                "load_average_1min": env.load_average(), "malloc": env.cpu_malloc(),
                "threads": args.threads, "layout": args.layout, "dtype": "float32",
                "stat": args.stat, "mode": "train fwd+bwd"}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
