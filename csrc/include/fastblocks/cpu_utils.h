// Helpers for the CPU kernels' ATen side (argument checks, dtype dispatch). The conversions
// between storage and accumulation types are in cpu_convert.h, which needs no ATen header, so
// kernel-only translation units (the per-ISA depthwise files) skip parsing ATen (~11 s each).
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>

#include "fastblocks/common.h"
#include "fastblocks/cpu_convert.h"

namespace fastblocks::cpu {

inline void check_act(int64_t act) {
  TORCH_CHECK(act >= 0 && act < kNumActs, "fastblocks: unknown activation code ", act);
}

// fp16/bf16 accumulate in float, fp32 in float, fp64 in double.
#define FB_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace fastblocks::cpu
