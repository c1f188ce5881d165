// The depthwise CPU kernels compiled for AVX2 with FMA and F16C (256-bit vectors): the
// kernels_avx2<T>() table that kernels<T>() (depthwise_isa.cpp) hands out on CPUs where this is
// the widest ISA. One translation unit per ISA, so the three compile in parallel.
#include "fastblocks/depthwise_cpu_isa_table.h"

namespace fastblocks::cpu::dw {
namespace {

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
FB_DW_ISA_KERNELS(isa_avx2, 32)
#pragma GCC pop_options

}  // namespace

// Outside the target region: called from code compiled for baseline x86-64.
template <typename T>
Kernels<T> kernels_avx2() {
  return isa_avx2::table<T>();
}

template Kernels<float> kernels_avx2<float>();
template Kernels<double> kernels_avx2<double>();

}  // namespace fastblocks::cpu::dw
