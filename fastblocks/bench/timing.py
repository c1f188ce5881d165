"""Timers: CUDA events with the L2 cache flushed, CUDA-graph replay, host clock on CPU; and the
device's copy bandwidth, the ceiling that GB/s figures are compared against.

Every timer takes a list of callables (one per input set) and cycles through them, returns the
median and the 20th/80th percentiles of per-call times in microseconds, and warms up first so
that compilation, autotuning and allocator growth stay out of the numbers.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

L2_FLUSH_BYTES = 256 * 2 ** 20  # larger than any GPU's L2 (H100: 50 MB; B200: 126 MB)


@dataclass
class Timing:
    median_us: float
    p20_us: float
    p80_us: float
    reps: int
    method: str
    p90_us: float = float("nan")

    def as_dict(self) -> dict:
        return {"median_us": self.median_us, "p20_us": self.p20_us, "p80_us": self.p80_us,
                "p90_us": self.p90_us, "reps": self.reps, "timing": self.method}


def _summary(times_us: list[float], method: str) -> Timing:
    times_us = sorted(times_us)
    q = statistics.quantiles(times_us, n=10, method="inclusive") if len(times_us) > 1 else times_us * 9
    return Timing(statistics.median(times_us), q[1], q[7], len(times_us), method, q[8])


@dataclass
class Budget:
    """How long to spend per measurement. On CUDA, milliseconds of GPU time as in
    triton.testing.do_bench; on CPU, seconds of wall time."""
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 10
    max_reps: int = 1000
    cpu_warmup_s: float = 0.02
    cpu_rep_s: float = 0.15
    cpu_min_reps: int = 5
    cpu_max_reps: int = 2000

    @classmethod
    def quick(cls) -> "Budget":
        return cls(warmup_ms=10.0, rep_ms=40.0, min_reps=5, max_reps=300, cpu_warmup_s=0.01,
                   cpu_rep_s=0.05, cpu_min_reps=3, cpu_max_reps=500)


# ---- CPU -------------------------------------------------------------------------------------

def _warm_up(fns: Sequence[Callable], budget: Budget) -> float:
    """Call at least once per input set, then until cpu_warmup_s; the mean seconds per call."""
    k = len(fns)
    t0 = time.perf_counter()
    i = 0
    while True:
        fns[i % k]()
        i += 1
        if i >= k and time.perf_counter() - t0 >= budget.cpu_warmup_s:
            break
    return (time.perf_counter() - t0) / i


def time_cpu(fns: Sequence[Callable], budget: Budget) -> Timing:
    """Median of per-call host-clock times (CPU work is synchronous)."""
    return time_cpu_interleaved([fns], budget)[0]


def time_cpu_interleaved(providers: Sequence[Sequence[Callable]], budget: Budget) -> list[Timing]:
    """Per provider (a list of calls, one per input set), the median of per-call host-clock
    times, the providers' calls alternating one by one: a shared CPU host's slow phases (other
    tenants, descheduled vCPUs; tens of percent on the dev box) then fall on every provider
    alike, so their ratio is an in-process ratio. Every provider gets the same number of calls,
    sized by the slowest one's budget."""
    ests = [_warm_up(fns, budget) for fns in providers]
    n = int(min(max(budget.cpu_rep_s / max(max(ests), 1e-9), budget.cpu_min_reps),
                budget.cpu_max_reps))
    times: list[list[float]] = [[] for _ in providers]
    for j in range(n):
        for fns, out in zip(providers, times):
            fn = fns[j % len(fns)]
            s = time.perf_counter()
            fn()
            out.append((time.perf_counter() - s) * 1e6)
    method = "cpu perf_counter" + (", providers interleaved call by call" if len(providers) > 1 else "")
    return [_summary(t, method) for t in times]


# ---- CUDA ------------------------------------------------------------------------------------

class CudaTimer:
    """CUDA-event timing of one call at a time, each after a 256 MB write that evicts L2 (so
    inputs come from HBM, as they do for a layer inside a network). The flush runs outside the
    events; while the GPU runs it the host queues the call, so launch overhead is hidden and
    the numbers are GPU time."""

    def __init__(self, device: torch.device):
        self.device = device
        self._flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def flush(self) -> None:
        self._flush.zero_()

    def time(self, fns: Sequence[Callable], budget: Budget) -> Timing:
        k = len(fns)
        for fn in fns:
            fn()
        torch.cuda.synchronize(self.device)
        # estimate the cost of one (flush + call), as do_bench does
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(5):
            self.flush()
            fns[i % k]()
        end.record()
        torch.cuda.synchronize(self.device)
        est_ms = max(start.elapsed_time(end) / 5, 1e-4)
        n_warm = max(1, int(budget.warmup_ms / est_ms))
        n_rep = int(min(max(budget.rep_ms / est_ms, budget.min_reps), budget.max_reps))
        for i in range(n_warm):
            fns[i % k]()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            self.flush()
            starts[i].record()
            fns[i % k]()
            ends[i].record()
        torch.cuda.synchronize(self.device)
        times = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
        return _summary(times, "cuda events, L2 flushed")

    def time_graph(self, fns: Sequence[Callable], budget: Budget, calls_per_graph: int = 20) -> Timing:
        """Latency with launch overhead removed: capture `calls_per_graph` calls (cycling the
        input sets) into one CUDA graph and time its replays; per-call time = replay time /
        calls_per_graph. Inputs stay in L2 between the calls, as in a small-batch inference
        loop. Raises if the calls cannot be captured (the caller falls back to `time`)."""
        k = len(fns)
        # Warm up on a side stream before capture (cuBLAS/cuDNN handles, autograd streams).
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for i in range(max(3, k)):
                fns[i % k]()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls_per_graph):
                fns[i % k]()
        graph.replay()
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize(self.device)
        est_ms = max(start.elapsed_time(end), 1e-4)
        n_rep = int(min(max(budget.rep_ms / est_ms, budget.min_reps), budget.max_reps))
        for _ in range(max(1, int(budget.warmup_ms / est_ms))):
            graph.replay()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            starts[i].record()
            graph.replay()
            ends[i].record()
        torch.cuda.synchronize(self.device)
        times = [s.elapsed_time(e) * 1e3 / calls_per_graph for s, e in zip(starts, ends)]
        del graph
        return _summary(times, f"cuda graph ({calls_per_graph} calls per replay)")


# ---- copy bandwidth --------------------------------------------------------------------------

def copy_bandwidth(device: torch.device, budget: Budget, nbytes: int | None = None) -> dict:
    """GB/s of a large `dst.copy_(src)` on `device`, counting bytes read plus bytes written:
    the practical ceiling for a memory-bound op, measured in the same run as the ops."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = 2 ** 30 if device.type == "cuda" else 2 ** 27  # 1 GiB / 128 MiB per buffer
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        nbytes = min(nbytes, max(free // 4, 2 ** 24))
    n = nbytes // 4
    src = torch.rand(n, device=device)  # not zeros: never time on zeros
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    if device.type == "cuda":
        # A copy of a buffer this size is far past L2: no flush needed between calls.
        for _ in range(3):
            fn()
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(20)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(20)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        median_us = statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
        method = "cuda events"
    else:
        t = time_cpu([fn], Budget(cpu_warmup_s=budget.cpu_warmup_s, cpu_rep_s=max(budget.cpu_rep_s, 0.1),
                                  cpu_min_reps=5, cpu_max_reps=50))
        median_us, method = t.median_us, t.method
    moved = 2 * n * 4
    del src, dst
    return {"gbps": moved / (median_us * 1e-6) / 1e9, "bytes": moved, "median_us": median_us,
            "method": f"dst.copy_(src), {n * 4 // 2 ** 20} MiB each, read+write counted, {method}"}
