"""`fastblocks verify` of ops: a seeded parity fuzz of every op and backend, forward and backward."""
from __future__ import annotations

import warnings

from ._common import device_arg, dtype_arg, fmt_err, print_table
from .bench_ops import resolve_ops


def verify_ops(args) -> int:
    import torch

    import fastblocks
    from .. import testing as parity
    from ..bench.cases import DTYPE_SHORT, REGISTRY
    from ..bench.harness import _why_backend

    ops, _ = resolve_ops(args.op, required=False)
    if args.device:
        devices = [device_arg(args.device)]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    wanted = args.backend or ["triton", "cuda", "cpu"]
    print("fastblocks verify: parity with eager PyTorch on a seeded fuzz, forward and every gradient")
    print("  fp32/fp64: torch.testing.assert_close defaults; fp16/bf16: max error vs an fp32 "
          f"reference <= {parity.LOWP_FACTOR:g}x eager's own")
    print(flush=True)
    rows = [["op", "device", "backend", "dtype", "result"]]
    n_pass = n_fail = n_skip = 0
    failures = []
    for name in ops:
        op = REGISTRY[name]
        why = op.missing()
        if why:
            rows.append([name, "-", "-", "-", f"skipped: {why}"])
            n_skip += 1
            continue
        for dev in devices:
            dtypes = args.dtype or ([torch.float32, torch.float64] if dev.type == "cpu"
                                    else [torch.float32, torch.float16, torch.bfloat16])
            for backend in wanted:
                if not args.backend and backend == {"cpu": "cuda", "cuda": "cpu"}[dev.type]:
                    continue  # the cuda backend never runs CPU tensors, nor cpu CUDA ones
                reason = _why_backend(backend, dev.type, op.c_ops)
                if reason:
                    rows.append([name, dev.type, backend, "-", f"skipped: {reason}"])
                    n_skip += 1
                    continue
                for dtype in dtypes:
                    if backend == "triton" and dev.type == "cpu" and dtype == torch.bfloat16:
                        # numpy, which runs the interpreter's arithmetic, has no bfloat16: the
                        # results are not Triton's (measured: errors up to 1e10 on conv_bn_act)
                        rows.append([name, dev.type, backend, DTYPE_SHORT[dtype],
                                     "skipped: the Triton interpreter has no bfloat16 arithmetic"])
                        n_skip += 1
                        continue
                    bad, worst_f, worst_b, n = [], 0.0, 0.0, 0
                    try:
                        cases = op.fuzz(dev, dtype, seed=args.seed)
                    except Exception as exc:
                        cases, bad = [], [("fuzz inputs", f"{type(exc).__name__}: {exc}")]
                    for fc in cases:
                        n += 1
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                with fastblocks.backend(backend):
                                    res = parity.check(fc.fast, fc.eager, fc.args, fc.grad_idx, seed=args.seed,
                                                       names=fc.arg_names)
                        except Exception as exc:
                            text = str(exc).strip().splitlines()
                            bad.append((fc.label, f"{type(exc).__name__}: {text[0] if text else ''}"[:200]))
                            continue
                        worst_f = max(worst_f, res.fwd_err)
                        worst_b = max(worst_b, res.bwd_err or 0.0)
                        if not res.ok:
                            bad.append((fc.label, "; ".join(res.messages)[:200]))
                    if bad:
                        n_fail += 1
                        rows.append([name, dev.type, backend, DTYPE_SHORT[dtype],
                                     f"FAIL {len(bad)}/{n} configs"])
                        by_msg: dict[str, list[str]] = {}
                        for lbl, msg in bad:
                            by_msg.setdefault(msg, []).append(lbl)
                        for msg, labels in by_msg.items():
                            more = f" and {len(labels) - 2} more" if len(labels) > 2 else ""
                            failures.append(f"{name} {dev.type} {backend} {DTYPE_SHORT[dtype]}: {msg}\n"
                                            f"      configs: {'; '.join(labels[:2])}{more}")
                    else:
                        n_pass += 1
                        rows.append([name, dev.type, backend, DTYPE_SHORT[dtype],
                                     f"pass ({n} configs; max err fwd {fmt_err(worst_f)}, grad {fmt_err(worst_b)})"])
    print_table(rows)
    for f in failures:
        print(f"  FAIL {f}")
    print(f"verify: {n_pass} passed, {n_fail} failed, {n_skip} skipped")
    return 1 if n_fail else 0



