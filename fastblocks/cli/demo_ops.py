"""The op table of `fastblocks demo`: parity and speed of every op family on one real layer shape."""
from __future__ import annotations

import math
import warnings

from ._common import device_arg, fmt_err, print_device_header, print_table, timing_threads


def demo_ops(args) -> int:
    import torch

    device = device_arg(args.device)
    old_threads = torch.get_num_threads()
    try:
        return _demo(args, device, timing_threads(device, args.threads))
    finally:
        torch.set_num_threads(old_threads)


def _demo(args, device, thread_note: str) -> int:
    import torch

    import fastblocks
    from .. import testing as parity
    from ..bench.cases import REGISTRY
    from ..bench.harness import resolved_backend, time_one
    from ..bench.timing import Budget

    print_device_header("fastblocks demo: parity with eager PyTorch and speed, one real layer shape per op",
                        device, thread_note)
    print(f"  parity: fp32, forward and every gradient, torch.testing.assert_close defaults; "
          f"times: median, fastblocks backend 'auto'")
    print(flush=True)
    budget = Budget.quick()
    head = ["op", "shape", "auto ->", "fwd err", "grad err", "parity", "eager fwd", "fb fwd", "x",
            "eager f+b", "fb f+b", "x"]
    table, problems, missing, mismatches = [head], [], [], []
    fwd_speedups, bwd_speedups = [], []
    for name, op in REGISTRY.items():
        why = op.missing()
        if why:
            missing.append(name)
            problems.append(f"{name}: not available: {why}")
            continue
        try:
            shape = op.demo_shape(device.type)
            case = op.case(shape, torch.float32, "nchw", "fwd", device)
            args_ = case.make_inputs(0)
            backend = resolved_backend(case, "auto")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fastblocks.backend("auto"):
                    res = parity.check(case.fast, case.eager, args_, case.grad_idx, names=case.arg_names)
            ok = res.ok
            if not ok:
                mismatches.append(name)
                problems.append(f"{name}: {'; '.join(res.messages)}")
            times = {}
            for mode in ("fwd", "fwd+bwd"):
                c = op.case(shape, torch.float32, "nchw", mode, device)
                for prov in ("eager", "fastblocks:auto"):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        times[mode, prov] = time_one(c, prov, budget)["median_us"]
        except Exception as exc:
            problems.append(f"{name}: failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            mismatches.append(name)
            table.append([name, "", "", "", "", "ERROR", "", "", "", "", "", ""])
            continue
        sf = times["fwd", "eager"] / times["fwd", "fastblocks:auto"]
        sb = times["fwd+bwd", "eager"] / times["fwd+bwd", "fastblocks:auto"]
        fwd_speedups.append(sf)
        bwd_speedups.append(sb)
        table.append([name, shape.label, backend, fmt_err(res.fwd_err), fmt_err(res.bwd_err),
                      "ok" if ok else "MISMATCH",
                      f"{times['fwd', 'eager']:.1f} µs", f"{times['fwd', 'fastblocks:auto']:.1f} µs", f"{sf:.2f}",
                      f"{times['fwd+bwd', 'eager']:.1f} µs", f"{times['fwd+bwd', 'fastblocks:auto']:.1f} µs",
                      f"{sb:.2f}"])
    print_table(table, right={3, 4, 6, 7, 8, 9, 10, 11})
    for p in problems:
        print(f"  ! {p}")
    n = len(fwd_speedups)
    if n:
        def geo(xs):
            return math.exp(sum(math.log(x) for x in xs) / len(xs))
        n_ok = sum(row[5] == "ok" for row in table[1:])
        verdict = (f"verdict: {n_ok}/{len(table) - 1} ops match eager "
                   f"(forward and backward); fastblocks is faster than eager on "
                   f"{sum(s > 1 for s in fwd_speedups)}/{n} forward, {sum(s > 1 for s in bwd_speedups)}/{n} "
                   f"fwd+bwd (geomean {geo(fwd_speedups):.2f}x / {geo(bwd_speedups):.2f}x)")
    else:
        verdict = "verdict: no op could run"
    if mismatches:
        verdict += f"; MISMATCH or error in {', '.join(mismatches)}"
    if missing:
        verdict += f"; not available: {', '.join(missing)}"
    print(verdict)
    return 1 if mismatches else 0



