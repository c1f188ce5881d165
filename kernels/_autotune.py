"""The project's one way to autotune a Triton kernel: ``triton.autotune`` with an explicit key,
today's hand-set block sizes as the first ("prior") config, short benchmarks, no tuning in
the interpreter, and an opt-in record of every choice made.

    @autotune(configs=[triton.Config({"BLOCK": 4096}, num_warps=8),   # configs[0]: the prior
                       triton.Config({"BLOCK": 1024}, num_warps=4)],
              key=["ACT", "size_class"])
    @triton.jit
    def _kernel(x_ptr, y_ptr, n, size_class, ACT: tl.constexpr, BLOCK: tl.constexpr): ...

    _kernel[lambda META: (triton.cdiv(n, META["BLOCK"]),)](x, y, n, size_class(n), ACT=act)

The launcher passes neither the tuned meta-parameters nor ``num_warps``; a grid that depends
on them is a function of ``META``.

- ``key`` names kernel arguments (runtime or constexpr) whose change re-tunes. Triton adds the
  dtype of every tensor argument by itself. A key never names a batch-dependent size: pass
  ``size_class(n)`` (a log-4 bucket) as an extra, otherwise unused, int argument instead, so
  the tuning cache grows with the shape classes met, not with every batch size.
- ``derive`` (optional): ``{name: fn(args) -> value}``, meta-parameters computed from the
  arguments and the chosen config (``triton.heuristics`` under the autotuner), for kernels
  whose tile *shape* follows the tensor shape while the config sets its size and warps.
- ``prune(configs, args) -> configs`` (optional): drop configs a shape cannot use (hard
  constraints) or that waste most of a tile; returning nothing keeps the prior. With
  ``derive``, configs that derive the same block sides and warps for a shape (a tile clipped
  by a small plane) are timed once.
- ``reset_to_zero`` / ``restore_value``: every argument a kernel accumulates into (atomics,
  ``+=`` into memory) or writes in place over an input, else each benchmarked config adds to or
  overwrites the previous one's result. No kernel of fastblocks needs them today: each stores
  every element of fresh outputs (partial sums included) exactly once.

Under TRITON_INTERPRET=1 (CPU: tests, CI), with FASTBLOCKS_AUTOTUNE=prior, once the
FASTBLOCKS_AUTOTUNE_BUDGET_S seconds of tuning a process may spend are spent, or while a CUDA
graph is captured (a new key met then keeps the prior for the process), only the prior runs:
the early-prune hook returns ``[configs[0]]``, and one config is never benchmarked
(triton.runtime.autotuner.Autotuner.run caches it without timing). The interpreter's timings
mean nothing, and the prior keeps CPU results what they were before tuning existed.

With FASTBLOCKS_AUTOTUNE_LOG=path, every tuning appends one JSON line to ``path`` (kernel, key,
chosen config, each config's time, seconds spent): bench/gpu_session.sh sets it for the
benchmark stages and bench/autotune_record.py sums the lines up into the results.
"""
from __future__ import annotations

import json
import os
import threading
import time

import triton
from triton import knobs

# Benchmark of one config during tuning: triton.testing.do_bench with 5 ms of warm-up and
# 20 ms of timed calls instead of its 25/100 ms defaults, so one tuning of k configs costs
# about k * 30 ms plus the first compile of each config. Best of the median, as triton.
WARMUP_MS = 5
REP_MS = 20

PRIOR_ENV = "FASTBLOCKS_AUTOTUNE"      # "prior" (or "0", "off"): always the prior config
LOG_ENV = "FASTBLOCKS_AUTOTUNE_LOG"    # path: one JSON line per tuning
BUDGET_ENV = "FASTBLOCKS_AUTOTUNE_BUDGET_S"  # seconds of tuning per process, then the prior

_spent_s = 0.0  # wall time of every config's benchmark so far (its first compile included)

#: every Autotuner made by :func:`autotune`, in definition order
TUNED: list = []


def size_class(n: int) -> int:
    """Log-4 bucket of a size, as an odd number: 3 for n <= 1, 5 up to 4, 7 up to 16, 9 up to
    64, ... A key argument that groups sizes within a factor of 4, so a new batch size re-tunes
    only when it moves a kernel's work into another class. Odd and never 1, so Triton's integer
    specialisation (== 1, divisible by 16) compiles no extra variant for it."""
    log2_ceil = (max(int(n), 1) - 1).bit_length()
    return 2 * ((log2_ceil + 1) // 2) + 3


def prior_only() -> bool:
    """Whether only the prior config runs: the interpreter, FASTBLOCKS_AUTOTUNE=prior, the
    FASTBLOCKS_AUTOTUNE_BUDGET_S seconds of tuning this process may spend are spent, or a CUDA
    graph is being captured (benchmarking synchronizes, which a capture forbids)."""
    if knobs.runtime.interpret:
        return True
    if os.environ.get(PRIOR_ENV, "").strip().lower() in ("prior", "0", "off", "no", "false"):
        return True
    return budget_spent() or _capturing()


def _capturing() -> bool:
    import torch
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def budget_spent() -> bool:
    budget = os.environ.get(BUDGET_ENV, "").strip()
    return bool(budget) and _spent_s >= float(budget)


def _bench(fn, quantiles):
    global _spent_s
    t0 = time.perf_counter()
    try:
        return triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, quantiles=quantiles)
    finally:
        _spent_s += time.perf_counter() - t0


def _early_prune(prune, derive):
    def early_config_prune(configs, named_args, **kwargs):
        if prior_only():
            return [configs[0]]
        args = {**named_args, **kwargs}
        kept = list(prune(configs, args)) if prune else list(configs)
        if derive:  # configs that derive the same kernel (a clipped tile): time the first
            seen, unique = set(), []
            for c in kept:
                full = {**args, **c.kwargs}
                sig = (tuple(f(full) for f in derive.values()), c.num_warps, c.num_stages)
                if sig not in seen:
                    seen.add(sig)
                    unique.append(c)
            kept = unique
        return kept or [configs[0]]
    return early_config_prune


def autotune(configs, key, *, derive=None, prune=None, reset_to_zero=None, restore_value=None):
    """Decorator over ``@triton.jit``: ``triton.autotune`` by the conventions above.
    configs[0] must be the kernel's prior (its hand-set block sizes and warps); key must be a
    non-empty list of argument names."""
    configs = list(configs)
    if not configs:
        raise ValueError("configs must hold at least the prior config")
    if not key:
        raise ValueError("key must name the arguments the choice depends on")

    def decorator(fn):
        inner = triton.heuristics(derive)(fn) if derive else fn
        pruning = {"early_config_prune": _early_prune(prune, derive)}
        tuner = triton.autotune(configs=configs, key=list(key), prune_configs_by=pruning,
                                reset_to_zero=reset_to_zero, restore_value=restore_value,
                                do_bench=_bench)(inner)
        tuner.fastblocks_prior = configs[0]
        tuner.fastblocks_key = list(key)
        # Autotuner.run hands its listener `configs_timings` even when it timed nothing (one
        # config left after pruning): start it empty so that path cannot raise.
        tuner.configs_timings = {}
        TUNED.append(tuner)
        return tuner
    return decorator


def config_dict(config) -> dict:
    """A triton.Config as JSON: its meta-parameters, warps and stages."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def kernel_name(tuner) -> str:
    fn = tuner.base_fn
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


_log_lock = threading.Lock()


def _install_log(path: str) -> None:
    """Chain a listener (triton.knobs.autotuning.listener) that appends each tuning to path."""
    previous = knobs.autotuning.listener
    by_fn = {}

    def listener(fn, key, best_config, configs_timings, duration, cache_hit):
        if previous is not None:
            previous(fn=fn, key=key, best_config=best_config, configs_timings=configs_timings,
                     duration=duration, cache_hit=cache_hit)
        tuner = by_fn.get(fn) or next((t for t in TUNED if _wraps(t, fn)), None)
        if tuner is None:
            return  # a kernel outside fastblocks
        by_fn[fn] = tuner
        timed = duration is not None
        rec = {"kernel": kernel_name(tuner), "key": [str(k) for k in key],
               "config": config_dict(best_config),
               "prior": config_dict(tuner.fastblocks_prior),
               "seconds": round(duration, 4) if timed else None,
               "budget_spent": budget_spent(),
               "timings_ms": ([{**config_dict(c), "ms": _median(t)}
                               for c, t in configs_timings.items()] if timed else None)}
        with _log_lock, open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    knobs.autotuning.listener = listener


def _median(t):
    """Autotuner timings are do_bench's (median, 20th, 80th percentile) in ms."""
    return t[0] if isinstance(t, (list, tuple)) else t


def _wraps(tuner, fn) -> bool:
    """Whether fn is in tuner's chain (heuristics, the JIT or interpreted function, ...)."""
    inner = tuner.fn
    while inner is not None:
        if inner is fn:
            return True
        inner = getattr(inner, "fn", None)
    return False


if os.environ.get(LOG_ENV):
    _install_log(os.environ[LOG_ENV])
