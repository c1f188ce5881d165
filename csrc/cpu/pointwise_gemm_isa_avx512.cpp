// The pointwise GEMM micro-kernels (pointwise_cpu_gemm_kernels.h) compiled for AVX-512 (512-bit
// vectors; with AVX2 and FMA): gemm_avx512(), which gemm_kernel() (pointwise_cpu_gemm.h) hands out
// where the depthwise family's ISA detection chose this width. One translation unit
// per ISA, as depthwise_isa_*.cpp.
// 64-byte vectors stay inside always-inline helpers: the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#include "fastblocks/pointwise_cpu_gemm_kernels.h"

namespace fastblocks::cpu::pw {
namespace {

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
FB_PW_ISA_KERNELS(isa_avx512, 64)
#pragma GCC pop_options

}  // namespace

// Outside the target region: called from code compiled for baseline x86-64.
GemmFn gemm_avx512() { return &isa_avx512::gemm; }

}  // namespace fastblocks::cpu::pw
