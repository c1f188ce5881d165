"""`fastblocks verify [MODEL]`: parity with eager PyTorch.

With MODEL (a zoo name, hf:<transformers config> or package.module:factory): build it,
optimize a copy with the same weights, compare every output and every parameter gradient in
eval and train mode on random inputs (fastblocks.model_parity). Without MODEL: a seeded fuzz
of every op and backend (verify_ops.py). Exit code 1 on any mismatch.
"""
from __future__ import annotations

import warnings

from ._common import UsageError, device_arg, dtype_arg, positive_int, print_table, swap_summary
from ._model_spec import MODEL_HELP, load_model
from .verify_ops import verify_ops


def _fmt(v: float) -> str:
    return "nan" if v != v else ("0" if v == 0 else f"{v:.2e}")


def verify_model(args) -> int:
    import torch

    import fastblocks
    from ..model_parity import check_model

    device = device_arg(args.device)
    dtype = args.dtype[0] if args.dtype else torch.float32
    spec = load_model(args.model)
    c, h, w = spec.input_size
    if args.size:
        h = w = args.size
    model = spec.model.to(device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = fastblocks.optimize(model)
    print(f"fastblocks verify {spec.label}: optimized copy vs the eager model, same weights, "
          f"input {args.batch}x{c}x{h}x{w} {str(dtype).replace('torch.', '')} on {device}")
    report = getattr(optimized, "fastblocks_report", None)
    if report is not None:
        print(f"  swapped: {swap_summary(report)}")
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, c, h, w, generator=gen).to(device=device, dtype=dtype)
    failed = 0
    for mode in args.mode or ["eval", "train"]:
        res = check_model(model, optimized, lambda: x, mode=mode, seed=args.seed)
        outs = [r for r in res.rows if r.what.startswith("output")]
        grads = [r for r in res.rows if r.what.startswith("grad")]
        rows = [["mode", "tensor", "max abs err", "max rel err", "result"]]
        for r in outs:
            rows.append([mode, r.what, _fmt(r.max_abs), _fmt(r.max_rel), "ok" if r.ok else "MISMATCH"])
        bad = [r for r in grads if not r.ok]
        if grads:
            worst = max(grads, key=lambda r: r.max_abs if r.max_abs == r.max_abs else float("inf"))
            rows.append([mode, f"{len(grads)} parameter gradients (worst: {worst.what[5:]})",
                         _fmt(worst.max_abs), _fmt(worst.max_rel),
                         "ok" if not bad else f"MISMATCH in {len(bad)}"])
        print_table(rows, right={2, 3})
        for r in [r for r in res.rows if not r.ok][:10]:
            print(f"  ! {mode} {r.what}: {r.message}")
        failed += not res.ok
        print()
    if dtype in (torch.float16, torch.bfloat16):  # model_parity's rule for half precisions
        print(f"tolerance: {str(dtype).replace('torch.', '')}: max error vs a float64 run of the eager "
              "model <= 2x eager's own (fastblocks/model_parity.py); max rel err can be large "
              "where eager's values are near zero")
    else:
        print("tolerance: within torch.testing.assert_close defaults of eager, or max error vs a "
              "float64 run of the eager model <= 2x eager's own; outputs under 1 are first scaled "
              "by a power of two so their largest value is in [1, 2), so atol cannot hide an error "
              "in tiny outputs (fastblocks/model_parity.py)")
    if not failed and _all_zero_output(model, x):
        print(f"verdict: INCONCLUSIVE: eager's output is all zeros ({str(dtype).replace('torch.', '')}, "
              f"input {h}x{w}), so equal outputs prove nothing; try float32, a larger --size or "
              "trained weights")
        return 1
    print("verdict: " + ("PASS: the optimized model matches eager" if not failed
                         else f"FAIL in {failed} mode(s)"))
    return 1 if failed else 0


def _all_zero_output(model, x) -> bool:
    """Whether the eager model in eval mode returns only zeros for ``x`` (e.g. a randomly
    initialised deep net in float16, whose activations underflow): a parity check of zeros
    against zeros passes whatever the kernels compute."""
    import copy

    import torch

    from ..model_parity import _tensors
    with torch.no_grad():
        outs = _tensors(copy.deepcopy(model).eval()(x))
    return bool(outs) and all(not t.any() for t in outs)


def cmd_verify(args) -> int:
    if args.model:
        if args.op or args.backend:
            raise UsageError("--op/--backend fuzz the ops; give either MODEL or --op, not both")
        if args.dtype and len(args.dtype) > 1:  # repeatable for the op fuzz; a model runs one
            raise UsageError("verify MODEL checks one --dtype at a time (repeat --dtype only for "
                             "the op fuzz)")
        return verify_model(args)
    return verify_ops(args)


def add_parser(sub) -> None:
    s = sub.add_parser("verify", help="parity with eager: of a model (MODEL), or a fuzz of every op; "
                                      "exit code 1 on any mismatch")
    s.add_argument("model", nargs="?", metavar="MODEL",
                   help=MODEL_HELP + "; omit to fuzz the ops")
    s.add_argument("--op", action="append", metavar="NAME", help="op name (repeatable, or 'all'; default all)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="MODEL default: cuda if a GPU is here, else cpu; ops default: cpu, and cuda too "
                                                        "if a GPU is here")
    s.add_argument("--backend", action="append", choices=["triton", "cuda", "cpu", "torch"],
                   help="ops: backend(s) to check (default: the kernel backends triton, cuda, cpu)")
    s.add_argument("--dtype", action="append", type=dtype_arg,
                   help="ops default: float32 + float64 on CPU; float32, float16, bfloat16 on CUDA; "
                        "MODEL default float32")
    s.add_argument("--batch", type=positive_int, default=2, help="MODEL: batch size (default 2)")
    s.add_argument("--size", type=positive_int, help="MODEL: input height = width (default: native)")
    s.add_argument("--mode", action="append", choices=["eval", "train"], help="MODEL: default both")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_verify)
