// The depthwise CPU kernels compiled for baseline x86-64, SSE2 (128-bit vectors): the
// kernels_sse2<T>() table that kernels<T>() (depthwise_isa.cpp) hands out on CPUs where this is
// the widest ISA. One translation unit per ISA, so the three compile in parallel.
#include "fastblocks/depthwise_cpu_isa_table.h"

namespace fastblocks::cpu::dw {
namespace {

// No target region: the build's own flags are baseline x86-64.
FB_DW_ISA_KERNELS(isa_sse2, 16)

}  // namespace

// Outside the target region: called from code compiled for baseline x86-64.
template <typename T>
Kernels<T> kernels_sse2() {
  return isa_sse2::table<T>();
}

template Kernels<float> kernels_sse2<float>();
template Kernels<double> kernels_sse2<double>();

}  // namespace fastblocks::cpu::dw
