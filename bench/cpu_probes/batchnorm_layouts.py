"""CPU probe behind a policy comment in fastblocks (run: OMP_NUM_THREADS=1 python THIS_FILE).
It prints interleaved medians; the numbers quoted in the code came from the 2-core AMD EPYC dev VM."""
import torch, time
torch.set_num_threads(1)
bn = torch.nn.BatchNorm2d(144).eval()
for shape in [(8,144,56,56),(8,64,56,56),(8,512,7,7)]:
    bn = torch.nn.BatchNorm2d(shape[1]).eval()
    x = torch.randn(shape); xc = x.contiguous(memory_format=torch.channels_last)
    r = torch.nn.ReLU()
    with torch.no_grad():
        fs = {"nchw": lambda: r(bn(x)), "cl": lambda: r(bn(xc))}
        ts = {k: [] for k in fs}
        for _ in range(15):
            for k, f in fs.items():
                t0 = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t0)
    print(shape, {k: round(sorted(v)[7]*1e3, 3) for k, v in ts.items()})
