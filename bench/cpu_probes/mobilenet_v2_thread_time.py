"""CPU probe behind the fused inverted residual's README figures (run: python THIS_FILE [BATCH]
[REPS]): zoo mobilenet_v2, fp32 eval, 1 thread, each provider's forwards alternating one by one
in one process, medians of thread CPU time (time.thread_time), which other jobs on a shared host
disturb far less than wall time: eager, fastblocks.optimize, torch.compile with inductor freezing,
and torch.compile of the optimized model. Set GLIBC_TUNABLES as `fastblocks bench models` does
(fastblocks/bench/env.py) to match its allocator behaviour."""
import copy
import statistics
import sys
import time

import torch
import torch._inductor.config as inductor_config

import fastblocks
from fastblocks.models import create_model

torch.set_num_threads(1)
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 21
plain = create_model("mobilenet_v2", fused=False).eval()
x = torch.randn(batch, 3, 224, 224)
models = {}
for name in ("eager", "fastblocks", "compile", "fastblocks+compile"):
    m = copy.deepcopy(plain)
    if name.startswith("fastblocks"):
        m = fastblocks.optimize(m)
    if name.endswith("compile"):
        m = torch.compile(m)
        with inductor_config.patch(freezing=True), torch.no_grad():
            m(x)  # compiles (freezing takes effect at the first call)
    models[name] = m
times = {k: [] for k in models}
with torch.no_grad():
    for m in models.values():
        m(x)
    for _ in range(reps):
        for k, m in models.items():
            t0 = time.thread_time()
            m(x)
            times[k].append(time.thread_time() - t0)
med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
for k, v in med.items():
    print(f"{k:20s} {v:8.1f} ms  {med['eager'] / v:5.2f}x eager  "
          f"{med['compile'] / v:5.2f}x compile")
