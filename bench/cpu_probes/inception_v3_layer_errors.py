"""CPU probe behind the numerics rule of fastblocks/optimize/_cpu_layout.py (run: python THIS_FILE
THREADS). zoo inception_v3 (random weights, seed 0, batch 2, 75 px, one training forward, then eval), as
tests/zoo_checks.py builds it: every conv -> BN -> ReLU unit is run on the float64 model's own input to it, in
float64 (the reference) and in float32 by eager NCHW, eager channels_last, and the optimized
model's fused unit on a channels_last and on an NCHW input. Printed per unit: kernel, input
channels, reduction length K = Cin*kh*kw, and each float32 run's max error vs float64 as a
ratio to eager NCHW's; then the geomean and max per kernel group; then the whole model's
output error (the model_parity scaling) for eager NCHW, eager channels_last and optimized."""
import copy
import math
import sys

import torch
from torch import nn

import fastblocks
from fastblocks.model_parity import _unit_scaled
from fastblocks.testing import max_abs_err

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
CL = torch.channels_last
torch.manual_seed(0)
model = fastblocks.create_model("inception_v3", fused=False, aux_logits=False)
x = torch.randn(2, 3, 75, 75)
model(x)  # one training forward first, as zoo_checks does: BN statistics move off 0 / 1
model.eval()
fused = fastblocks.optimize(copy.deepcopy(model)).eval()
hi = copy.deepcopy(model).double()
units = [n for n, m in model.named_modules()
         if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)]
inputs = {}
hooks = [dict(hi.named_modules())[n].register_forward_pre_hook(
    lambda m, a, n=n: inputs.setdefault(n, a[0].detach())) for n in units]
with torch.no_grad():
    out_hi = hi(x.double())
for h in hooks:
    h.remove()
pm, fm, hm = dict(model.named_modules()), dict(fused.named_modules()), dict(hi.named_modules())
groups = {}
with torch.no_grad():
    fused(x), fused(x)  # packs every weight (the steady state the model runs in)
    print(f"{'unit':32s} {'kernel':6s} {'Cin':>5s} {'K':>6s}  eager_cl  opt_cl  opt_nchw")
    for n in units:
        x64 = inputs[n]
        x32 = x64.float()
        ref = hm[n](x64)
        e = max_abs_err(pm[n](x32), ref)
        ecl = max_abs_err(pm[n](x32.contiguous(memory_format=CL)), ref)
        fm[n](x32.contiguous(memory_format=CL))
        ocl = max_abs_err(fm[n](x32.contiguous(memory_format=CL)), ref)
        fm[n](x32)
        onchw = max_abs_err(fm[n](x32), ref)
        conv = pm[n].conv
        kh, kw = conv.kernel_size
        kern = f"{kh}x{kw}"
        k = conv.in_channels * kh * kw
        r = (ecl / e, ocl / e, onchw / e)
        if kern != "1x1":
            groups.setdefault("kxk", []).append(r)
        groups.setdefault(kern, []).append(r)
        print(f"{n:32s} {kern:6s} {conv.in_channels:5d} {k:6d}  {r[0]:8.2f} {r[1]:7.2f} {r[2]:9.2f}")
    print("group     n   geomean (max): eager_cl | opt_cl | opt_nchw")
    for g, rs in groups.items():
        cols = list(zip(*rs))
        s = " | ".join(f"{math.exp(sum(map(math.log, c)) / len(c)):.2f} ({max(c):.2f})" for c in cols)
        print(f"{g:6s} {len(rs):4d}   {s}")
    e_out = model(x)
    for what, out in (("eager NCHW", e_out), ("eager channels_last",
                      model.to(memory_format=CL)(x.contiguous(memory_format=CL))),
                      ("optimized", fused(x))):
        c, r, h = _unit_scaled(out, e_out, out_hi)
        print(f"model output, {what}: max error vs float64 {max_abs_err(c, h):.1f}")
