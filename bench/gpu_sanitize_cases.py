"""A few multi-tile cases of every fastblocks CUDA kernel family, forward and backward, for
compute-sanitizer (memcheck, racecheck) in bench/gpu_session.sh. Small enough to finish in
well under a minute under racecheck, big enough that each kernel runs several blocks and
several tiles per plane (so tile borders, halos and grid-stride loops are all exercised).

    compute-sanitizer --tool memcheck python bench/gpu_sanitize_cases.py [--backend cuda]

Each case is also checked for parity with eager (fastblocks.testing): exit 1 on a mismatch,
so a race that corrupts a result shows even where the sanitizer misses it. Run with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so out-of-bounds accesses hit unallocated memory rather than
another tensor of PyTorch's cache.
"""
from __future__ import annotations

import argparse
import sys

import torch

import fastblocks
from fastblocks.ops.activation import apply_activation
from fastblocks.ops.conv_bn_act import conv_bn_act, reference_conv_bn_act
from fastblocks.ops.depthwise import depthwise_conv2d, reference_depthwise_conv2d
from fastblocks.testing import check

# (N, C, H, W), kernel, stride, padding, activation: NCHW 56x56 planes are 2 x 2 tiles of
# 28 x 28; 7x7 planes pack several per block; 5x5 stride 2 takes the gather input gradient.
DEPTHWISE = [
    ((2, 24, 56, 56), 3, 1, 1, "relu6"),
    ((2, 40, 28, 28), 5, 2, 2, "hardswish"),
    ((2, 72, 14, 14), 7, 1, 3, "silu"),
    ((3, 19, 33, 45), 3, 2, 1, None),  # odd sizes: partial tiles, 1-channel packs
]
ACTIVATIONS = [((2, 40, 30, 31), "hardswish"), ((4099,), "silu")]  # vector body + odd tail
# conv -> BN -> act, training (batch statistics: the split reductions, several ranges per
# channel, then the normalisation; backward from the saved conv output) and eval (cuDNN
# conv + the bias_act_ epilogue): (N, C_in, H, W), C_out, kernel, activation. 2 x 56 x 56
# rows per channel split over several blocks; odd sizes for the one-element passes. Smooth or
# sparse-kinked activations only: eval folds BN into bf16 weights, which moves pre-activations
# across relu's dense kink at 0 (grad_x 2.1x eager's error, bf16 channels_last, on CPU).
CONV_BN_ACT = [
    ((2, 16, 56, 56), 32, 1, "hardswish"),
    ((3, 8, 33, 29), 37, 3, "silu"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cuda", choices=["cuda", "triton", "cpu"],
                   help="cpu: the same cases on CPU tensors (to check this script without a GPU)")
    p.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                   help="dtypes to run (repeatable; default float32 and bfloat16)")
    args = p.parse_args(argv)
    dtypes = [getattr(torch, d) for d in (args.dtype or ["float32", "bfloat16"])]
    if args.backend != "cpu" and not torch.cuda.is_available():
        print("gpu_sanitize_cases: no CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if args.backend == "cpu" else "cuda")
    failures = 0
    gen = torch.Generator(device="cpu").manual_seed(0)
    for dtype in dtypes:
        for layout in (torch.contiguous_format, torch.channels_last):
            for shape, k, s, pad, act in DEPTHWISE:
                c = shape[1]
                x = torch.randn(shape, generator=gen).to(dev, dtype).contiguous(memory_format=layout)
                w = torch.randn(c, 1, k, k, generator=gen).to(dev, dtype)
                b = torch.randn(c, generator=gen).to(dev, dtype)
                with fastblocks.backend(args.backend):
                    r = check(lambda x, w, b: depthwise_conv2d(x, w, b, s, pad, 1, act),
                              lambda x, w, b: reference_depthwise_conv2d(x, w, b, s, pad, 1, act),
                              [x, w, b], grad_idx=(0, 1, 2), names=("x", "weight", "bias"))
                failures += not r.ok
                print(f"depthwise {shape} k{k} s{s} {act} {dtype} {layout}: "
                      f"{'ok' if r.ok else 'MISMATCH ' + '; '.join(r.messages)}", flush=True)
            for shape, act in ACTIVATIONS:
                x = torch.randn(shape, generator=gen).to(dev, dtype) * 4
                if x.dim() == 4:
                    x = x.contiguous(memory_format=layout)
                with fastblocks.backend(args.backend):
                    r = check(lambda x: apply_activation(x, act),
                              lambda x: getattr(torch.nn.functional, act)(x), [x], grad_idx=(0,))
                failures += not r.ok
                print(f"{act} {tuple(shape)} {dtype} {layout}: "
                      f"{'ok' if r.ok else 'MISMATCH ' + '; '.join(r.messages)}", flush=True)
            for shape, c_out, k, act in CONV_BN_ACT:
                failures += _conv_bn_act_case(shape, c_out, k, act, dtype, layout, dev, gen,
                                              args.backend)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"{failures} mismatches")
    return 1 if failures else 0


def _conv_bn_act_case(shape, c_out, k, act, dtype, layout, dev, gen, backend) -> int:
    """Both modes of one conv_bn_act layer; the number of mismatches (0 to 2)."""
    x = torch.randn(shape, generator=gen).to(dev, dtype).contiguous(memory_format=layout)
    w = (torch.randn(c_out, shape[1], k, k, generator=gen) * 0.2).to(dev, dtype)
    cb, bw, bb = (torch.randn(c_out, generator=gen).to(dev, dtype) for _ in range(3))
    rm, rv = torch.zeros(c_out, device=dev), torch.ones(c_out, device=dev)
    bad = 0
    for training in (True, False):
        kw = dict(training=training, padding=k // 2, activation=act)
        # eval: our kernel (bias_act_) is forward only, the gradients are ATen's through the
        # folded weights: x's gradient is enough to run the backward
        grads = (0, 1, 2, 3, 4) if training else (0,)
        with fastblocks.backend(backend):
            r = check(lambda x, w, cb, bw, bb: conv_bn_act(x, w, cb, bw, bb, rm.clone(), rv.clone(), **kw),
                      lambda x, w, cb, bw, bb: reference_conv_bn_act(
                          x, w, cb, bw, bb, rm.to(x.dtype), rv.to(x.dtype), **kw),
                      [x, w, cb, bw, bb], grad_idx=grads,
                      names=("x", "weight", "bias", "bn_weight", "bn_bias"))
        bad += not r.ok
        print(f"conv_bn_act {shape} -> {c_out} k{k} {act} {'train' if training else 'eval'} {dtype} "
              f"{layout}: {'ok' if r.ok else 'MISMATCH ' + '; '.join(r.messages)}", flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
