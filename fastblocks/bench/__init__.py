"""Benchmarks of fastblocks ops against eager PyTorch and torch.compile (`fastblocks bench`).

    from fastblocks import bench
    results = bench.run(bench.BenchConfig(ops=["hardswish"], quick=True))
    print(bench.format_table(results))
    bench.save(results, "bench/results", "ops-hardswish")   # JSON + PNG

Modules: ``cases`` (what is timed: ops, shapes, bytes, FLOPs; ``REGISTRY``), ``shapes`` (the
layer shapes of the architectures), ``timing`` (CUDA events / graphs / host clock, copy
bandwidth), ``harness`` (providers, the run, the table, saving; parity by ``fastblocks.testing``), ``plot`` (PNG), ``env`` (versions, device, commit).
"""
from .cases import REGISTRY, Case, OpBench, Shape, get_op, list_ops
from .harness import (ALL_PROVIDERS, BenchConfig, build_cases, default_name, default_providers,
                      format_table, run, save)
from .timing import Budget

__all__ = ["REGISTRY", "Case", "OpBench", "Shape", "get_op", "list_ops", "ALL_PROVIDERS",
           "BenchConfig", "Budget", "build_cases", "default_name", "default_providers",
           "format_table", "run", "save"]
