// The depthwise CPU kernels' dispatch by instruction set: kernels<T>() picks, once per process,
// the table of the widest ISA this CPU runs (AVX-512, AVX2+FMA, or baseline SSE2), so one
// binary built without -march runs on any x86-64. FASTBLOCKS_CPU_ISA=avx2|sse2 forces a
// narrower one (tests use it to cover all three). The tables themselves are compiled in
// depthwise_isa_{avx512,avx2,sse2}.cpp.
#include <cstdlib>
#include <string>

#include "fastblocks/depthwise_cpu_kernels.h"

namespace fastblocks::cpu::dw {
namespace {

enum class Isa { kSse2, kAvx2, kAvx512 };

Isa detect_isa() {
  Isa best = Isa::kSse2;
  __builtin_cpu_init();
  // The AVX2 and AVX-512 regions are compiled with F16C too and run vcvtph2ps/vcvtps2ph
  // (widen_pixels_impl), so they need it (every AVX2 CPU so far has it).
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    best = Isa::kAvx2;
  }
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
  // A narrower ISA may be forced (tests); a wider one than the CPU has is ignored.
  if (const char* env = std::getenv("FASTBLOCKS_CPU_ISA")) {
    const std::string s(env);
    if (s == "sse2") best = Isa::kSse2;
    if (s == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
  }
  return best;
}

}  // namespace

template <typename T>
const Kernels<T>& kernels() {
  static const Kernels<T> table = [] {
    switch (detect_isa()) {
      case Isa::kAvx512:
        return kernels_avx512<T>();
      case Isa::kAvx2:
        return kernels_avx2<T>();
      default:
        return kernels_sse2<T>();
    }
  }();
  return table;
}

template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();

}  // namespace fastblocks::cpu::dw
