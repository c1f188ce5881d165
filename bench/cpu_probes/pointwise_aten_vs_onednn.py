"""CPU probe behind a policy comment in fastblocks (run: OMP_NUM_THREADS=1 python THIS_FILE).
It prints interleaved medians; the numbers quoted in the code came from the 2-core AMD EPYC dev VM."""
import torch, time
torch.set_num_threads(1)
import torch.nn.functional as F
from fastblocks.ops import _mkldnn_conv
rows = []
for ci, co in ((64, 64), (32, 192), (192, 32), (576, 96)):
  for hw in (7, 10, 14, 20, 28, 40, 56):
    x = torch.randn(1, ci, hw, hw).contiguous(memory_format=torch.channels_last)
    w = torch.randn(co, ci, 1, 1); b = torch.randn(co)
    fa = lambda: F.conv2d(x, w, b).clamp_(0, 6)
    fb = lambda: _mkldnn_conv.conv_pointwise(x, w, b, [1,1],[0,0],[1,1],1,2)
    with torch.no_grad():
        for _ in range(20): fa(); fb()
        ta, tb = [], []
        for _ in range(60):
            t0 = time.perf_counter(); fa(); t1 = time.perf_counter(); fb(); t2 = time.perf_counter()
            ta.append(t1 - t0); tb.append(t2 - t1)
    ta = sorted(ta)[30]*1e6; tb = sorted(tb)[30]*1e6
    print(f"{ci}->{co} {hw}x{hw} out {co*hw*hw:7d}: aten {ta:7.1f}  onednn {tb:7.1f}  onednn faster by {ta/tb:.2f}x", flush=True)
