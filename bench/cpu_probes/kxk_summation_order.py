"""CPU probe behind _mkldnn_conv.long_reduction (run: python THIS_FILE). Part 1: max error vs
float64 of a kxk convolution on channels_last input (oneDNN brg_conv_fwd) as a ratio to NCHW
(jit on nChw16c), by input channels, geomean of 4 seeds, 1 and 2 threads. Part 2: a 192->64 3x3
summed in float32 in two emulated orders, one running sum over all Cin*9 products vs a sum per
block of input channels then the blocks, beside the two kernels' own errors. The numbers
quoted in fastblocks came from the 2-core AMD EPYC VM (AVX-512)."""
import math

import torch
import torch.nn.functional as F

CL = torch.channels_last


def err(a, ref):
    return (a.double() - ref).abs().max().item()


torch.manual_seed(0)
for threads in (1, 2):
    torch.set_num_threads(threads)
    for cin, k in [(3, (3, 3)), (8, (3, 3)), (16, (3, 3)), (32, (3, 3)), (64, (3, 3)),
                   (16, (1, 7)), (48, (5, 5))]:
        ratios = []
        for _ in range(4):
            x = torch.randn(2, cin, 28, 28).relu()
            w = torch.randn(64, cin, *k) / (cin * k[0] * k[1]) ** 0.5
            pad = (k[0] // 2, k[1] // 2)
            ref = F.conv2d(x.double(), w.double(), None, 1, pad)
            ratios.append(err(F.conv2d(x.contiguous(memory_format=CL), w, None, 1, pad), ref)
                          / err(F.conv2d(x, w, None, 1, pad), ref))
        g = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"{threads} thread(s) Cin {cin:3d} kernel {k}: channels_last / NCHW error {g:.2f}")

torch.set_num_threads(1)
cin, cout = 192, 64
x = torch.randn(2, cin, 17, 17).relu()
w = torch.randn(cout, cin, 3, 3) / (cin * 9) ** 0.5
ref = F.conv2d(x.double(), w.double(), None, 1, 1)
print(f"192->64 3x3: NCHW {err(F.conv2d(x, w, None, 1, 1), ref):.2g}, channels_last "
      f"{err(F.conv2d(x.contiguous(memory_format=CL), w, None, 1, 1), ref):.2g}")
cols = F.unfold(x, 3, padding=1)  # (N, Cin*9 input-channel major, L)
wmat, ref = w.reshape(cout, -1), ref.reshape(2, cout, -1)


def emulate(block=None):
    acc = torch.zeros(2, cout, cols.shape[-1])
    total = torch.zeros_like(acc)
    for i in range(cin * 9):
        acc = acc + wmat[:, i].view(1, cout, 1) * cols[:, i].view(2, 1, -1)
        if block and (i + 1) % (block * 9) == 0:
            total, acc = total + acc, torch.zeros_like(acc)
    return total + acc


print(f"emulated: one running sum {err(emulate(), ref):.2g}, "
      f"per 16-channel block {err(emulate(16), ref):.2g}")
