"""`fastblocks list`: every zoo model with its parameters, FLOPs at its native resolution and
the fastblocks modules of its fused form; `fastblocks bench list`: the benchmark ops and
their shape sets."""
from __future__ import annotations

import warnings


def _model_row(name: str) -> list[str]:
    """Built on the meta device (no memory, no arithmetic): FlopCounterMode counts a forward
    of meta tensors, and optimize() of the meta model tells which fastblocks ops serve it."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import fastblocks
    from ..models import create_model, model_info
    from ._common import fused_ops

    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, fused=False).eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, *info.input_size))
        flops = counter.get_total_flops()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = fastblocks.optimize(model, inplace=True)
    ops = fused_ops(fused.fastblocks_report)
    c, h, w = info.input_size
    return [name, f"{params / 1e6:.2f}M", f"{flops / 1e9:.2f}", f"{h}x{w}", ops]


def cmd_list(args) -> int:
    from ..models import list_models
    from ._common import print_table

    names = list_models(args.pattern) if getattr(args, "pattern", None) else list_models()
    rows = [["model", "params", "GFLOPs", "input", "fastblocks ops in the fused form (swaps)"]]
    for name in names:
        try:
            rows.append(_model_row(name))
        except Exception as exc:  # report, do not hide the rest of the zoo
            rows.append([name, "-", "-", "-", f"error: {type(exc).__name__}: {exc}"[:120]])
    print(f"models ({len(names)}; FLOPs of one image at the native input, a multiply-add = 2):")
    print_table(rows, right={1, 2})
    print("ops and shape sets: fastblocks bench list")
    return 0


def cmd_bench_list(args) -> int:
    from ..bench.cases import REGISTRY
    print("benchmark ops (fastblocks bench ops --op NAME; --shapes SET)")
    for name, op in REGISTRY.items():
        missing = op.missing()
        print(f"  {name:<17} {op.description}" + (f"  [NOT AVAILABLE: {missing}]" if missing else ""))
        for set_name, desc in op.shape_sets.items():
            n_cpu = len(op.shapes(set_name, "cpu", [1], False))
            n_gpu = len(op.shapes(set_name, "cuda", [1], False))
            count = f"{n_cpu} shapes" if n_cpu == n_gpu else f"{n_cpu} shapes on CPU, {n_gpu} on GPU"
            if set_name != "sweep":
                count += " per batch size"
            print(f"      {set_name:<19} {desc} ({count})")
        print(f"      defaults: cuda {op.default_sets('cuda', False)} batch {op.default_batches('cuda', False)}; "
              f"cpu {op.default_sets('cpu', False)} batch {op.default_batches('cpu', False)}")
    print("models: fastblocks list; fastblocks bench models --model NAME")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("list", help="zoo models: parameters, FLOPs, fastblocks modules used")
    s.add_argument("pattern", nargs="?", help="shell pattern on model names, e.g. 'efficientnet*'")
    s.set_defaults(func=cmd_list)


def add_bench_parser(bsub) -> None:
    s = bsub.add_parser("list", help="benchmark ops and their shape sets")
    s.set_defaults(func=cmd_bench_list)
