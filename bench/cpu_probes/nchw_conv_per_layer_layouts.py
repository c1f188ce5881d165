"""CPU probe behind a policy comment in fastblocks (run: OMP_NUM_THREADS=1 python THIS_FILE).
It prints interleaved medians; the numbers quoted in the code came from the 2-core AMD EPYC dev VM."""
# MobileNetV2 1x1 conv + bias (+relu6) layers at batch 8, NCHW in/out, 1 thread:
# A: ATen F.conv2d (NCHW) + in-place act; B: to CL, oneDNN packed fused, back to NCHW; C: oneDNN NCHW plain weight
import torch, time
torch.set_num_threads(1)
import fastblocks
from fastblocks.ops import _mkldnn_conv
import torch.nn.functional as F
L = [(32,16,112,0),(16,96,112,2),(96,24,56,0),(24,144,56,2),(144,24,56,0),(144,32,28,0),(32,192,28,2),(192,32,28,0),(192,64,14,0),(64,384,14,2),(384,64,14,0),(384,96,14,0),(96,576,14,2),(576,96,14,0),(576,160,7,0),(160,960,7,2),(960,160,7,0),(960,320,7,0),(320,1280,7,2)]
tot=[0,0,0]
with torch.inference_mode():
  for ci,co,h,a in L:
    x = torch.randn(8,ci,h,h); w = torch.randn(co,ci,1,1); b = torch.randn(co)
    def A():
        y = F.conv2d(x,w,b); return y.clamp_(0,6) if a else y
    def B():
        y = _mkldnn_conv.conv_pointwise(x.contiguous(memory_format=torch.channels_last), w, b, [1,1],[0,0],[1,1],1,a)
        return y.contiguous()
    def C():
        return _mkldnn_conv.conv_pointwise(x, w, b, [1,1],[0,0],[1,1],1,a) if False else torch.ops.mkldnn._convolution_pointwise(x, w, b, [0,0],[1,1],[1,1],1, *( ("hardtanh",[0.0,6.0],"") if a else ("none",[],"") ))
    fs=(A,B,C)
    rs=[f() for f in fs]; [f() for f in fs]
    for r in rs[1:]: assert torch.allclose(rs[0], r, atol=1e-3, rtol=1e-4), (rs[0]-r).abs().max()
    assert rs[1].is_contiguous()
    t=[[],[],[]]
    for _ in range(11):
      for i,f in enumerate(fs):
        t0=time.perf_counter(); f(); t[i].append(time.perf_counter()-t0)
    m=[sorted(v)[5]*1e3 for v in t]
    for i in range(3): tot[i]+=m[i]
    print(f"{ci}->{co} {h}: A {m[0]:.3f}  B {m[1]:.3f}  C {m[2]:.3f} ms")
print("total A B C", [round(v,2) for v in tot])
