// The depthwise CPU kernels compiled for AVX-512 (512-bit vectors; with AVX2, FMA and F16C): the
// kernels_avx512<T>() table that kernels<T>() (depthwise_isa.cpp) hands out on CPUs where this is
// the widest ISA. One translation unit per ISA, so the three compile in parallel.
#include "fastblocks/depthwise_cpu_isa_table.h"

namespace fastblocks::cpu::dw {
namespace {

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
FB_DW_ISA_KERNELS(isa_avx512, 64)
#pragma GCC pop_options

}  // namespace

// Outside the target region: called from code compiled for baseline x86-64.
template <typename T>
Kernels<T> kernels_avx512() {
  return isa_avx512::table<T>();
}

template Kernels<float> kernels_avx512<float>();
template Kernels<double> kernels_avx512<double>();

}  // namespace fastblocks::cpu::dw
