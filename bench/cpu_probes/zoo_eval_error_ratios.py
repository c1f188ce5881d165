"""CPU probe behind the numerics rule of fastblocks/optimize/_cpu_layout.py. Every zoo case of
the test files (tests/test_models_*.py, the sizes they use) built as tests/zoo_checks.py builds it, optimized, and compared in eval mode in float32
as model_parity does; printed: the optimized model's max output error vs float64 as a ratio to
eager's (the rule's limit is 2.0), whether the layout hook converted, and the pass/fail of
check_model; the share of the model's convolution multiply-adds in long kxk reductions
(_mkldnn_conv.long_reduction) with whether the exact route was taken. `--no-exact` disables
that route (the numbers before it). Tests run each xdist worker at 1 thread; `-n 0` on a
2-core machine runs 2 (run: python THIS_FILE [--no-exact] THREADS [NAME ...])."""
import copy
import sys

import torch

import fastblocks
from fastblocks.model_parity import _run, _unit_scaled, check_model
from fastblocks.optimize import _cpu_layout
from fastblocks.testing import max_abs_err

CASES = [("lenet5", 32, {}), ("nin", 32, {}), ("squeezenet1_1", 64, {}), ("alexnet", 67, {}),
         ("densenet121", 32, {}), ("zfnet", 96, {}), ("squeezenet1_0", 64, {}),
         ("vgg11", 32, {}), ("vgg16_bn", 32, {}), ("vgg19_bn", 32, {}),
         ("resnet18", 32, {}), ("resnext50_32x4d", 32, {}), ("preact_resnet18", 32, {}),
         ("resnet110_sd", 32, {}), ("resnet34", 32, {}), ("resnet50", 32, {}),
         ("resnet101", 32, {}), ("resnet152", 32, {}), ("wide_resnet50_2", 32, {}),
         ("resnext101_32x4d", 32, {}), ("resnext101_64x4d", 32, {}), ("wrn28_10", 32, {}),
         ("shake_shake_26_2x32d", 32, {}), ("ibn_resnet50_a", 32, {}), ("googlenet", 64, {}),
         ("fractalnet", 32, {}), ("mobilenet_v3_large", 32, {}), ("efficientnet_b0", 64, {}),
         ("se_resnet50", 64, {}), ("shufflenet_v2_x1_0", 32, {}), ("shufflenet_v1_g3", 32, {}),
         ("cspdarknet53", 8, {}), ("cspresnet50", 8, {}), ("cspresnext50", 8, {}),
         ("oct_resnet50", 29, {}), ("stacked_hourglass", 63, {"num_stacks": 1}),
         ("inception_v2", 8, {}), ("vovnet39", 29, {}), ("vovnet57", 29, {}),
         ("inception_v3", 75, {"aux_logits": False}), ("inception_v4", 75, {}),
         ("inception_resnet_v1", 75, {}), ("inception_resnet_v2", 75, {})]

argv = [a for a in sys.argv[1:] if a != "--no-exact"]
if "--no-exact" in sys.argv:
    _cpu_layout._EXACT_MIN_SHARE = float("inf")
torch.set_num_threads(int(argv[0]) if argv else 1)
only = set(argv[1:])
for name, size, kwargs in CASES:
    if only and name not in only:
        continue
    torch.manual_seed(0)
    model = fastblocks.create_model(name, fused=False, **kwargs)
    c = fastblocks.models.model_info(name).input_size[0]
    x = torch.randn(2, c, size, size)
    model(x)
    fused = fastblocks.optimize(copy.deepcopy(model))
    res = check_model(model, fused, lambda: x, mode="eval", backward=False)
    hi = copy.deepcopy(model).double().eval()
    r, h = _run(model, x, None, 0)[0], _run(hi, x.double(), None, 0)[0]
    o = _run(fused, x, None, 0)[0]
    ratio = max(max_abs_err(*_unit_scaled(oo, rr, hh)[::2]) / max(max_abs_err(*_unit_scaled(rr, rr, hh)[::2]), 1e-300)
                for oo, rr, hh in zip(o, r, h))
    state = fused.__dict__.get(_cpu_layout._STATE) or {}
    print(f"{name:24s} {'cl' if _cpu_layout.enabled(fused) else 'nchw':4s} "
          f"long-kxk share {state.get('long_share', float('nan')):4.2f} "
          f"exact {str(state.get('exact', '-')):5s} ratio {ratio:5.2f} "
          f"{'ok' if res.ok else 'FAIL'}", flush=True)
