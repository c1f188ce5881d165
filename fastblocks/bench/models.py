"""Whole-model benchmarks: images/s, latency (median, p90) and peak memory of one model under
each provider, on CPU or CUDA; the harness behind `fastblocks bench models` and the speed
table of `fastblocks demo`.

Providers (each gets its own copy of the same weights):
    eager                 the plain PyTorch model
    compile               torch.compile(model); in eval, with inductor's freezing (BN folded,
                          weights prepacked, oneDNN post-ops on CPU): the strongest compile
    fastblocks            fastblocks.optimize(model)
    fastblocks+compile    torch.compile(fastblocks.optimize(model)), freezing in eval as above

A step is one forward under no_grad (eval), or forward + cross-entropy + backward + SGD step
(train; with a float16/bfloat16 dtype the parameters stay float32 under torch.autocast, i.e.
AMP). CPU: every provider's steps alternate one by one (time_cpu_interleaved: in-process
ratios on a shared host). CUDA: CUDA events per step; batch-1 eval replays CUDA graphs.
Peak memory: torch.cuda.max_memory_allocated over a step on CUDA; on CPU the peak of
allocated bytes over a step as torch.profiler's memory events record it.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import env
from .timing import Budget, CudaTimer, time_cpu_interleaved

SCHEMA = "fastblocks-bench-models/1"
PROVIDERS = ("eager", "compile", "fastblocks", "fastblocks+compile")


@dataclass
class ModelBenchConfig:
    """What to run: a model factory (a plain nn.Module), its input (C, H, W), and settings."""
    name: str
    make_model: Callable[[], nn.Module]
    input_size: tuple[int, int, int]
    batch: int = 8
    dtype: torch.dtype = torch.float32
    train: bool = False
    channels_last: bool = False
    device: torch.device = torch.device("cpu")
    providers: tuple[str, ...] = PROVIDERS
    budget: Budget | None = None
    threads: int | None = None
    progress: bool | None = None


def _prepare(provider: str, cfg: ModelBenchConfig, base: nn.Module) -> nn.Module:
    import fastblocks
    model = copy.deepcopy(base)
    if provider.startswith("fastblocks"):
        model = fastblocks.optimize(model, inplace=True)
    if provider.endswith("compile"):
        model = torch.compile(model)
    return model


def _freezing(provider: str, cfg: ModelBenchConfig):
    """inductor's freezing in eval (constant weights): what `torch.compile` of an inference
    model should be measured with. It takes effect when the first call compiles."""
    if provider.endswith("compile") and not cfg.train:
        import torch._inductor.config as inductor_config
        return inductor_config.patch(freezing=True)
    return contextlib.nullcontext()


def _step_fn(model: nn.Module, cfg: ModelBenchConfig, x: torch.Tensor, target: torch.Tensor):
    if not cfg.train:
        def step():
            with torch.no_grad():
                return model(x)
        return step
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = cfg.dtype in (torch.float16, torch.bfloat16)
    scaler = torch.amp.GradScaler(x.device.type) if cfg.dtype == torch.float16 else None

    def step():
        with torch.autocast(x.device.type, dtype=cfg.dtype) if amp else contextlib.nullcontext():
            out = model(x)
            logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", out[0])
            loss = nn.functional.cross_entropy(logits.float().flatten(2).mean(2) if logits.dim() > 2
                                               else logits.float(), target)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    return step


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints a line to the C-level stderr at every profiler start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak_bytes(step) -> int | None:
    """Peak of allocated bytes above the start of one step, from the allocation (+) and free
    (-) records that torch.profiler(profile_memory=True) keeps, in time order."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        return peak
    except Exception:  # a profiler without these records: say unknown, do not guess
        return None


def _cuda_peak_bytes(step, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def run(cfg: ModelBenchConfig) -> dict:
    """Time every provider of ``cfg``; a JSON-able dict (rows: one per provider with
    images_per_s, median_ms, p90_ms, peak_bytes, speedup_vs_eager, speedup_vs_compile, or
    error). Raises RuntimeError for a CUDA device without a GPU."""
    from tqdm.auto import tqdm

    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda asked for, but torch.cuda.is_available() is False")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    budget = cfg.budget or Budget(warmup_ms=200, rep_ms=2000, min_reps=10, max_reps=200,
                                  cpu_warmup_s=0.5, cpu_rep_s=3.0, cpu_min_reps=5, cpu_max_reps=200)
    try:
        torch.manual_seed(0)
        base = cfg.make_model()
        param_dtype = torch.float32 if cfg.train else cfg.dtype
        base = base.to(device=dev, dtype=param_dtype).train(cfg.train)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if cfg.channels_last:
            base = base.to(memory_format=torch.channels_last)
        c, h, w = cfg.input_size
        x = torch.randn(cfg.batch, c, h, w, device=dev, dtype=param_dtype).contiguous(memory_format=fmt)
        target = torch.randint(0, 10, (cfg.batch,), device=dev)
        rows, steps, swapped = [], {}, {}
        bar = tqdm(cfg.providers, desc=f"{cfg.name}: build + warm up", unit="provider",
                   file=sys.stderr, disable=(not cfg.progress) if cfg.progress is not None else None,
                   dynamic_ncols=True)
        for p in bar:
            bar.set_postfix_str(p, refresh=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = _prepare(p, cfg, base)
                    report = getattr(getattr(model, "_orig_mod", model), "fastblocks_report", None)
                    if report is not None:  # what the fastblocks rows time, as verify prints it
                        swapped.setdefault("summary", report.summary())
                        swapped.setdefault("kept", sorted(report.kept, key=lambda k: -len(report.kept[k]))[:1])
                    step = _step_fn(model, cfg, x, target)
                    with _freezing(p, cfg):
                        step()  # compiles here
                        step()
                steps[p] = step
            except Exception as exc:
                rows.append({"provider": p, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})
        bar.close()
        order = [p for p in cfg.providers if p in steps]
        timings, method = {}, ""
        if dev.type == "cpu":
            ts = time_cpu_interleaved([[steps[p]] for p in order], budget) if order else []
            timings = dict(zip(order, ts))
        else:
            timer = CudaTimer(dev)
            for p in order:
                t = None
                if cfg.batch == 1 and not cfg.train:
                    with contextlib.suppress(Exception):
                        t = timer.time_graph([steps[p]], budget, calls_per_graph=10)
                timings[p] = t or timer.time([steps[p]], budget)
        for p in order:
            t = timings[p]
            peak = (_cuda_peak_bytes(steps[p], dev) if dev.type == "cuda" else _cpu_peak_bytes(steps[p]))
            method = t.method
            rows.append({"provider": p, "median_ms": t.median_us / 1e3, "p90_ms": t.p90_us / 1e3,
                         "p20_ms": t.p20_us / 1e3, "reps": t.reps,
                         "images_per_s": cfg.batch / (t.median_us * 1e-6), "peak_bytes": peak,
                         "timing": t.method})
        by = {r["provider"]: r.get("median_ms") for r in rows if r.get("median_ms")}
        for r in rows:
            if r.get("median_ms"):
                r["speedup_vs_eager"] = by["eager"] / r["median_ms"] if "eager" in by else None
                r["speedup_vs_compile"] = by["compile"] / r["median_ms"] if "compile" in by else None
        rows.sort(key=lambda r: cfg.providers.index(r["provider"]))
        return {
            "schema": SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": env.git_commit(), "versions": env.versions(), "device": env.device_info(dev),
            "settings": {"model": cfg.name, "batch": cfg.batch, "input_size": list(cfg.input_size),
                         "dtype": str(cfg.dtype).replace("torch.", ""), "train": cfg.train,
                         "amp": cfg.train and cfg.dtype != torch.float32,
                         "channels_last": cfg.channels_last, "threads": torch.get_num_threads(),
                         "providers": list(cfg.providers), "timing": method,
                         "compile": "torch.compile default mode; eval with inductor freezing"},
            "rows": rows,
            "fastblocks_swapped": swapped or None,
        }
    finally:
        torch.set_num_threads(old_threads)


def format_table(results: dict) -> str:
    s = results["settings"]
    lines = [f"{s['model']} batch {s['batch']} {s['dtype']} {'train (fwd+bwd+SGD)' if s['train'] else 'eval'}"
             f"{' channels_last' if s['channels_last'] else ''} on {results['device']['name']} "
             f"({s['threads']} thread{'' if s['threads'] == 1 else 's'})"]
    sw = results.get("fastblocks_swapped")
    if sw:
        lines.append(f"fastblocks swapped: {sw['summary']}")
        if sw["summary"] == "nothing":
            why = f" (e.g. {sw['kept'][0]})" if sw.get("kept") else ""
            lines.append("warning: optimize() swapped nothing in this model, so the fastblocks rows "
                         f"time eager PyTorch{why}")
    head = ["provider", "images/s", "median ms", "p90 ms", "peak MB", "vs eager", "vs compile"]
    table = [head]
    for r in results["rows"]:
        if "error" in r:
            table.append([r["provider"], "error: " + r["error"][:80], "", "", "", "", ""])
            continue
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        table.append([r["provider"], f(r["images_per_s"], ".1f"), f(r["median_ms"], ".2f"),
                      f(r["p90_ms"], ".2f"),
                      f(r["peak_bytes"] / 2 ** 20 if r["peak_bytes"] is not None else None, ".1f"),
                      f(r.get("speedup_vs_eager"), ".2f") + "x" if r.get("speedup_vs_eager") else "-",
                      f(r.get("speedup_vs_compile"), ".2f") + "x" if r.get("speedup_vs_compile") else "-"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for j, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(row)).rstrip())
        if j == 0:
            lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
    return "\n".join(lines)


def plot(results: dict, path) -> str:
    """A bar chart of images/s per provider (PNG at ``path``); returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["rows"] if r.get("images_per_s")]
    s = results["settings"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh([r["provider"] for r in rows], [r["images_per_s"] for r in rows], color="#4878a8")
    for i, r in enumerate(rows):
        ax.text(r["images_per_s"], i, f" {r['images_per_s']:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images/s (higher is better)")
    ax.set_title(f"{s['model']} b{s['batch']} {s['dtype']} {'train' if s['train'] else 'eval'} — "
                 f"{results['device']['name'][:40]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
