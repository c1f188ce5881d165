// Shared by the C++ CPU kernels, the CUDA kernels and their bindings. Includes no torch and
// no CUDA header, so a .cu file can include it and compile with nvcc on a machine whose
// PyTorch ships no CUDA headers.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FB_HOST_DEVICE inline
#endif

namespace fastblocks {

// Element types a launcher is compiled for; the bindings map at::ScalarType onto these.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Activation codes. The Python side (fastblocks/ops/_activation_codes.py) and the Triton
// kernels (kernels/_activation_math.py) use the same numbers.
enum class Act : int {
  kNone = 0,
  kReLU = 1,
  kReLU6 = 2,
  kHardswish = 3,
  kHardsigmoid = 4,
  kSiLU = 5,
};
constexpr int kNumActs = 6;

FB_HOST_DEVICE float exp_(float x) { return expf(x); }
FB_HOST_DEVICE double exp_(double x) { return exp(x); }

// max(x, 0) and min(max(x, 0), 6) as ATen computes them: NaN propagates (relu(NaN) is NaN in
// eager, on CPU and CUDA) and -0.0 stays -0.0. Written as selects on `x < bound`, which a NaN
// fails, rather than as `x > 0 ? x : 0`, which turned NaN into 0.
template <typename acc_t>
FB_HOST_DEVICE acc_t clamp_min0(acc_t x) {
  return x < acc_t(0) ? acc_t(0) : x;
}
template <typename acc_t>
FB_HOST_DEVICE acc_t clamp06(acc_t x) {
  return x < acc_t(0) ? acc_t(0) : (x > acc_t(6) ? acc_t(6) : x);
}

// All math in the accumulation type (float for fp16/bf16/fp32, double for fp64). The
// derivative conventions at the kinks follow ATen exactly (e.g. hardswish' = x/3 + 1/2 on the
// open interval (-3, 3), 0 at -3 and 1 at 3, as torch 2.13 computes it) so gradients match eager bit for bit in fp32.
template <typename acc_t>
FB_HOST_DEVICE acc_t act_forward(acc_t x, int act) {
  const acc_t three = acc_t(3), six = acc_t(6);
  switch (act) {
    case int(Act::kReLU):
      return clamp_min0(x);
    case int(Act::kReLU6):
      return clamp06(x);
    case int(Act::kHardswish):
      return x * clamp06(x + three) / six;
    case int(Act::kHardsigmoid):
      return clamp06(x + three) / six;
    case int(Act::kSiLU):
      return x / (acc_t(1) + exp_(-x));
    default:
      return x;
  }
}

// d act(x) / dx, times the incoming gradient g.
template <typename acc_t>
FB_HOST_DEVICE acc_t act_backward(acc_t g, acc_t x, int act) {
  const acc_t zero = acc_t(0), three = acc_t(3), six = acc_t(6);
  switch (act) {
    case int(Act::kReLU):
      return x <= zero ? zero : g;  // NaN passes g, as ATen's threshold_backward
    case int(Act::kReLU6):
      return (x > zero && x < six) ? g : zero;
    case int(Act::kHardswish):
      return x <= -three ? zero : (x < three ? g * (x / three + acc_t(0.5)) : g);
    case int(Act::kHardsigmoid):
      return (x > -three && x < three) ? g * (acc_t(1) / six) : zero;
    case int(Act::kSiLU): {
      acc_t s = acc_t(1) / (acc_t(1) + exp_(-x));
      return g * s * (acc_t(1) + x * (acc_t(1) - s));
    }
    default:
      return g;
  }
}

}  // namespace fastblocks
