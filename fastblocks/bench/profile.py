"""Where a model's time goes, block by block: parameters, FLOPs (torch.utils.flop_counter),
bytes moved, measured time and share of the total, and the fastblocks modules serving each
block once optimized; the engine of `fastblocks profile`.

- Blocks: the modules ``depth`` levels below the root (depth 2: ``features.3``), in call order.
- FLOPs: FlopCounterMode's count for the block (a multiply-add counts 2).
- Bytes: for each leaf module of the block, its inputs and outputs and its parameters and
  buffers, once each (the traffic of running the leaves one after another, the eager lower
  bound; fusion is what cuts it).
- Time: forward hooks around each block (host clock after a device synchronize on CUDA),
  median over ``reps`` forwards under no_grad, for the eager model and its optimized copy,
  run in turn within each rep (interleaved); spread() measures each block's run-to-run noise.
"""
from __future__ import annotations

import copy
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class BlockProfile:
    name: str
    kind: str  # the block's class
    params: int
    flops: int
    bytes: int
    eager_ms: float
    fastblocks_ms: float | None
    kernels: list[str] = field(default_factory=list)  # optimize()'s patterns serving it ("2 conv -> BN -> relu6")
    spread: float = 0.0  # the larger run-to-run spread (see spread()) of its eager and fastblocks times


def _blocks(model: nn.Module, depth: int) -> list[tuple[str, nn.Module]]:
    out = []

    def walk(prefix, m, d):
        kids = list(m.named_children())
        if d == depth or not kids:
            out.append((prefix, m))
            return
        for n, c in kids:
            walk(f"{prefix}.{n}" if prefix else n, c, d + 1)
    walk("", model, 0)
    return out


def _nbytes(obj) -> int:
    leaves, _ = tree_flatten(obj)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))


def _install_timers(model: nn.Module, blocks: list[str], device, times: dict[str, list[float]]):
    """Forward hooks appending each block's time (ms) to ``times[name]``; returns the handles."""
    mods = dict(model.named_modules())
    starts: dict[str, float] = {}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    hooks = []
    for name in blocks:
        m = mods.get(name)
        if m is None:
            continue

        def pre(mod, args, name=name):
            sync()
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            sync()
            times[name].append((time.perf_counter() - starts.pop(name)) * 1e3)
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return hooks


def spread(samples: list[float]) -> float:
    """Run-to-run spread of one block's times: (75th - 25th percentile) / median, e.g. 0.1 for
    a block whose middle half of reps lies within 10% of its median (0 for < 4 samples)."""
    if len(samples) < 4:
        return 0.0
    q1, med, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / med if med > 0 else 0.0


def _time_interleaved(models: list[nn.Module], blocks: list[str], run, reps: int, device):
    """Per model, {block: [ms per rep]}: the models run in turn within each rep (eager,
    optimized, eager, ...), so load that comes and goes on the machine falls on both alike
    instead of on whichever ran during it (a trial on a loaded CPU saw per-block ratios of
    0.11x-12x from back-to-back runs of 5 reps while the whole forward was 1.44x)."""
    samples = [defaultdict(list) for _ in models]
    hooks = [h for m, t in zip(models, samples) for h in _install_timers(m, blocks, device, t)]
    try:
        for m in models:
            run(m)  # warm-up
        for t in samples:
            t.clear()
        for _ in range(reps):
            for m in models:
                run(m)
    finally:
        for h in hooks:
            h.remove()
    return [dict(t) for t in samples]


def profile_model(model: nn.Module, x: Tensor, depth: int = 2, reps: int = 5,
                  optimize: bool = True) -> tuple[list[BlockProfile], dict]:
    """Profile ``model`` (plain, eval mode is set) on input ``x`` (N, C, H, W); with
    ``optimize`` also time ``fastblocks.optimize`` of a copy. Returns the blocks in call order
    and totals {eager_ms, fastblocks_ms, flops, bytes, params} (totals of a whole forward,
    measured without hooks)."""
    import fastblocks
    model = model.eval()
    device = x.device

    def run(m):
        with torch.no_grad():
            m(x)

    names = [n for n, _ in _blocks(model, depth)]
    mods = dict(model.named_modules())
    order: list[str] = []
    hooks = [mods[n].register_forward_pre_hook(lambda m, a, n=n: order.append(n)) for n in names]
    with FlopCounterMode(display=False) as counter:
        run(model)
    for h in hooks:
        h.remove()
    flops_by = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    fast = fastblocks.optimize(copy.deepcopy(model)) if optimize else None
    timed = _time_interleaved([model] + ([fast] if fast is not None else []), names, run, reps, device)
    eager_s, fast_s = timed[0], (timed[1] if fast is not None else {})
    eager_t = {n: statistics.median(v) for n, v in eager_s.items() if v}
    fast_t = {n: statistics.median(v) for n, v in fast_s.items() if v}
    report = getattr(fast, "fastblocks_report", None)
    fast_mods = dict(fast.named_modules()) if fast is not None else {}
    out = []
    for name in dict.fromkeys(order):
        block = mods[name]
        kernels = _patterns_in(report, name) if report is not None else []
        placeholder = fast_mods.get(name)
        if not kernels and type(placeholder).__module__.startswith("fastblocks.optimize"):
            # a BN or activation whose work a conv before it now does (BatchNormFusedIntoConv)
            kernels = ["fused into an earlier block's swap"]
        out.append(BlockProfile(
            name=name, kind=type(block).__name__,
            params=sum(p.numel() for p in block.parameters()),
            flops=flops_by.get(f"{root}.{name}", 0),
            bytes=0,
            eager_ms=eager_t.get(name, float("nan")), fastblocks_ms=fast_t.get(name) if optimize else None,
            kernels=kernels,
            spread=max(spread(eager_s.get(name, [])), spread(fast_s.get(name, [])))))
    # bytes: one pass with hooks on every leaf of every block
    per_block = _bytes_per_block(model, [b.name for b in out], run)
    for b in out:
        b.bytes = per_block.get(b.name, 0)

    whole_ms: list[list[float]] = [[] for _ in timed]
    both = [model] + ([fast] if fast is not None else [])
    for _ in range(reps):  # interleaved as the blocks, without hooks
        for i, m in enumerate(both):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            run(m)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            whole_ms[i].append((time.perf_counter() - t) * 1e3)
    totals = {"eager_ms": statistics.median(whole_ms[0]),
              "fastblocks_ms": statistics.median(whole_ms[1]) if fast is not None else None,
              "flops": flops_by.get("Global", 0), "bytes": sum(b.bytes for b in out),
              "params": sum(p.numel() for p in model.parameters())}
    return out, totals


def _patterns_in(report, block: str) -> list[str]:
    """optimize()'s pattern names (as verify and the report print them) serving ``block``:
    the swaps at or inside it that no other swap there contains, with counts, or the swap
    that contains the block."""
    inside = [(p, path) for p, paths in report.swapped.items() for path in paths
              if path == block or path.startswith(block + ".")]
    if not inside:
        return sorted({p for p, paths in report.swapped.items() for path in paths
                       if block.startswith(path + ".")})
    tops = [(p, path) for p, path in inside
            if not any(q != path and path.startswith(q + ".") for _, q in inside)]
    counts: dict[str, int] = defaultdict(int)
    for p, _ in tops:
        counts[p] += 1
    return [f"{n} {p}" if n > 1 else p for p, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _bytes_per_block(model: nn.Module, names: list[str], run) -> dict[str, int]:
    mods = dict(model.named_modules())
    owner = {}
    for n in names:
        for m in mods[n].modules():
            owner[id(m)] = n
    totals: dict[str, int] = defaultdict(int)
    hooks = []

    def hook(m, args, out):
        own = sum(t.numel() * t.element_size()
                  for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))
        totals[owner[id(m)]] += _nbytes(args) + _nbytes(out) + own

    for m in model.modules():
        if id(m) in owner and not list(m.children()):
            hooks.append(m.register_forward_hook(hook))
    try:
        run(model)
    finally:
        for h in hooks:
            h.remove()
    return dict(totals)


def plot(blocks: list[BlockProfile], title: str, path) -> str:
    """Two scatter panels, eager time against FLOPs and against bytes, one point per block."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "flops", "GFLOPs"), (axes[1], "bytes", "MB moved")):
        scale = 1e9 if key == "flops" else 2 ** 20
        xs = [getattr(b, key) / scale for b in blocks]
        ax.scatter(xs, [b.eager_ms for b in blocks], label="eager", s=18)
        if any(b.fastblocks_ms is not None for b in blocks):
            ax.scatter(xs, [b.fastblocks_ms if b.fastblocks_ms is not None else float("nan") for b in blocks],
                       label="fastblocks", s=18, marker="x")
        ax.set_xlabel(label)
        ax.set_ylabel("time (ms)")
        ax.legend(fontsize=8)
    axes[0].set_title("FLOPs are not time", fontsize=9)
    axes[1].set_title("bytes moved vs time", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
