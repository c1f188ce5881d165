// The pointwise GEMM micro-kernels (pointwise_cpu_gemm_kernels.h) compiled for
// baseline x86-64, SSE2 (128-bit vectors): gemm_sse2(), which gemm_kernel() (pointwise_cpu_gemm.h)
// hands out where the depthwise family's ISA detection chose this width. One translation unit
// per ISA, as depthwise_isa_*.cpp.
// 64-byte vectors stay inside always-inline helpers: the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#include "fastblocks/pointwise_cpu_gemm_kernels.h"

namespace fastblocks::cpu::pw {
namespace {

#pragma GCC push_options
// No target region: the build's own flags are baseline x86-64.
FB_PW_ISA_KERNELS(isa_sse2, 16)
#pragma GCC pop_options

}  // namespace

// Outside the target region: called from code compiled for baseline x86-64.
GemmFn gemm_sse2() { return &isa_sse2::gemm; }

}  // namespace fastblocks::cpu::pw
