"""Reproducer: eager PyTorch's bf16 channels_last depthwise conv with a channel multiplier
reads memory it never wrote (torch 2.13.0+cpu; seen on a 2-thread Xeon with AVX512-BF16).

Freed allocator memory is filled with NaN first; the conv's output then holds NaN in about a
third of its elements, as the float64 result does not. Without the poisoning the garbage is
whatever the heap held before, so the same call returned NaN in some processes and not in
others (about 1 in 3 of those that had loaded fastblocks._C, which moves the heap, without
ever calling it). For that reason the test that runs our kernels under narrower ISAs checks
bf16 bit for bit against our fp32 kernel, not against eager.

    .venv/bin/python bench/repro_eager_bf16_depthwise_nan.py   # prints the NaN count
"""
import torch
import torch.nn.functional as F


def main() -> None:
    for n in (1 << 10, 1 << 14, 1 << 18, 1 << 20):  # freed buffers full of NaN
        for dtype in (torch.float32, torch.bfloat16):
            t = torch.full((n,), float("nan"), dtype=dtype)
            del t
    torch.manual_seed(0)
    x = torch.randn(2, 72, 13, 3).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(144, 1, 5, 5).to(torch.bfloat16)
    b = torch.randn(144).to(torch.bfloat16)
    y = F.conv2d(x, w, b, (1, 2), 1, 1, 72)
    ref = F.conv2d(x.double(), w.double(), b.double(), (1, 2), 1, 1, 72)
    print(f"torch {torch.__version__}: eager bf16 NaN in {int(y.isnan().sum())} of {y.numel()} "
          f"outputs; float64 reference NaN in {int(ref.isnan().sum())}")


if __name__ == "__main__":
    main()
