// Host emulation of the CUDA execution model, so the kernels of csrc/cuda/*.cu compile with the
// host compiler (g++) and run on the CPU in CI, which has no GPU.
//
// How a launch runs: `FB_LAUNCH(grid, block, smem, stream, kernel)(args...)` (csrc/include/
// fastblocks/cuda_launch.h; `kernel<<<grid, block, smem, stream>>>(args...)` under nvcc) runs the
// blocks one after another, in a shuffled order, on the calling thread. Each block's threads
// are cooperative fibers (POSIX ucontext, each on its own mmap'd stack behind a guard page):
// a fiber runs until it reaches __syncthreads() or a warp collective, or returns; the block's
// scheduler resumes the waiting fibers once every live thread of the block (of the warp's mask,
// for a collective) has arrived, in a freshly shuffled order each phase, so a read that relies
// on a missing barrier sees another order than the one the author had in mind.
//   - __shared__ arrays are thread_local statics (one block runs at a time per OS thread);
//     dynamic shared memory (`extern __shared__ T name[]`, rewritten by the loader to
//     `T* name = fb_emu::dynamic_shared<T>()`) is a per-launch buffer refilled with 0xFF
//     bytes (NaN for floats) before every block, so reading what no thread wrote shows.
//   - warp shuffles, votes and __syncwarp exchange values through a per-warp slot array between
//     two warp barriers (lanes are consecutive linear thread ids, 32 to a warp, as on the GPU).
//   - atomics are plain read-modify-writes: only one fiber runs at a time.
//   - half and bfloat16 are CUDA's own host-side types (cuda_fp16.h, cuda_bf16.h).
// Checked and reported as launch errors (cudaGetLastError): launch bounds (1024 threads per
// block, blockDim.z <= 64, gridDim.y/z <= 65535, 48 KiB dynamic shared memory without opt-in),
// __syncthreads() reached from different call sites in one phase (divergent barrier), and
// deadlock (a warp collective waiting for lanes stuck at a block barrier or already exited).
// Not emulated: memory fences across blocks running concurrently, clocks, cooperative groups,
// texture/surface memory, the memory model's visibility rules.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

// Execution-space keywords mean nothing on the host; CUDA's host_defines.h turns some of them
// into attributes, so they are redefined after its headers.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __launch_bounds__
#undef __forceinline__
#undef __noinline__
#define __global__
#define __device__
#define __host__
#define __constant__ const
#define __shared__ thread_local
#define __launch_bounds__(...)
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))

namespace fb_emu {

enum class Wait : int { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber;
struct Block;
extern thread_local Fiber* tl_fiber;
extern thread_local Block* tl_block;

// The calling fiber's coordinates (defined in cuda_emu_runtime.cpp).
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
int lane_id();
unsigned char* dynamic_shared_bytes();
// Park the calling fiber until every live thread of the block arrives (site: for the
// divergent-barrier check) / until every lane of `mask` in its warp arrives.
void block_barrier(const std::source_location& site);
void warp_barrier(unsigned mask);
// The calling lane's 8-byte exchange slot in its warp, and lane `lane`'s.
uint64_t* warp_slot(int lane);
// Lanes of the calling thread's warp that exist (partial last warp) and have not returned.
unsigned live_lanes();

// Runs `body` (which calls the kernel with the launch's arguments) as grid x block fibers.
// Returns cudaSuccess or the launch error, which cudaGetLastError() then reports.
using Body = void (*)(void* closure);
cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, Body body, void* closure);
// Counts launches per kernel address (fb_emu_launches: which kernels the tests reached).
void record_launch(const void* kernel);

template <typename T> T* dynamic_shared() { return reinterpret_cast<T*>(dynamic_shared_bytes()); }

// kernel<<<grid, block, smem, stream>>>(args...): the arguments are converted to the kernel's
// parameter types once, as CUDA copies them into the launch's parameter buffer.
template <typename... P> struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A> void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong argument count");
    record_launch(reinterpret_cast<const void*>(kernel));
    struct Closure {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } c{kernel, std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(std::forward<A>(a))...)};
    run_grid(grid, block, smem, [](void* p) {
      auto* cl = static_cast<Closure*>(p);
      std::apply(cl->kernel, cl->args);  // each thread gets its own copy, as registers
    }, &c);
  }
};
template <typename... P>
Launch<P...> make_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(P...)) {
  return Launch<P...>{kernel, grid, block, smem};
}

template <typename T> T shfl_impl(unsigned mask, T v, int src_of_lane(int lane, int width, int arg),
                                  int arg, int width) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  const int lane = lane_id();
  uint64_t raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  *warp_slot(lane) = raw;
  warp_barrier(mask);
  int src = src_of_lane(lane, width, arg);
  if (src < 0) src = lane;  // outside the segment: the lane keeps its own value
  raw = *warp_slot(src);
  warp_barrier(mask);  // every lane has read before any slot is written again
  T r;
  std::memcpy(&r, &raw, sizeof(T));
  return r;
}
inline int seg_base(int lane, int width) { return lane & ~(width - 1); }

}  // namespace fb_emu

#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#undef warpSize
#define threadIdx (::fb_emu::thread_idx())
#define blockIdx (::fb_emu::block_idx())
#define blockDim (::fb_emu::block_dim())
#define gridDim (::fb_emu::grid_dim())
#define warpSize 32

#define FB_LAUNCH(grid, block, smem, stream, ...) \
  ::fb_emu::make_launch(grid, block, smem, stream, __VA_ARGS__)

// ---- synchronization and warp collectives ----------------------------------------------------
inline void __syncthreads(const std::source_location site = std::source_location::current()) {
  ::fb_emu::block_barrier(site);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::fb_emu::warp_barrier(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline unsigned __activemask() { return ::fb_emu::live_lanes(); }

template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::fb_emu::shfl_impl<T>(mask, v, [](int lane, int w, int s) {
    return ::fb_emu::seg_base(lane, w) + (s & (w - 1));
  }, src, width);
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::fb_emu::shfl_impl<T>(mask, v, [](int lane, int w, int d) {
    return lane - d >= ::fb_emu::seg_base(lane, w) ? lane - d : -1;
  }, int(delta), width);
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::fb_emu::shfl_impl<T>(mask, v, [](int lane, int w, int d) {
    return lane + d < ::fb_emu::seg_base(lane, w) + w ? lane + d : -1;
  }, int(delta), width);
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::fb_emu::shfl_impl<T>(mask, v, [](int lane, int w, int m) {
    const int s = lane ^ m;
    return s < ::fb_emu::seg_base(lane, w) + w ? s : -1;
  }, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  const int lane = ::fb_emu::lane_id();
  *::fb_emu::warp_slot(lane) = pred != 0;
  ::fb_emu::warp_barrier(mask);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && *::fb_emu::warp_slot(l)) r |= 1u << l;
  ::fb_emu::warp_barrier(mask);
  return r;
}
inline int __all_sync(unsigned mask, int pred) {
  return (__ballot_sync(mask, pred) & mask & ::fb_emu::live_lanes()) ==
         (mask & ::fb_emu::live_lanes());
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

// ---- atomics (one fiber runs at a time: a plain read-modify-write is atomic) ----------------
template <typename T> T atomicAdd(T* p, T v) { T old = *p; *p = T(old + v); return old; }
template <typename T> T atomicSub(T* p, T v) { T old = *p; *p = T(old - v); return old; }
template <typename T> T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <typename T> T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; }
template <typename T> T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T> T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
template <typename T> T atomicAnd(T* p, T v) { T old = *p; *p = old & v; return old; }
template <typename T> T atomicOr(T* p, T v) { T old = *p; *p = old | v; return old; }
inline __half atomicAdd(__half* p, __half v) {
  __half old = *p; *p = __float2half_rn(__half2float(old) + __half2float(v)); return old;
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  __nv_bfloat16 old = *p;
  *p = __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(v));
  return old;
}

// ---- device intrinsics with host equivalents -------------------------------------------------
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
template <typename T> T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
