// CUDA kernels of the conv_bn_act family: BatchNorm with batch statistics plus the activation
// around the convolution output z (ATen's convolution: cuDNN), and the inference epilogue
// (bias + activation in place over a bias-free convolution output). Same arithmetic as the
// CPU kernels (csrc/cpu/conv_bn_act.cpp) and the Triton ones (kernels/conv_bn_act.py).
//
// Training forward (bn_act_train_forward), three launches:
//   1. partial shifted sums: per channel, sum(z - p) and sum((z - p)^2) over `split` ranges of
//      its N*H*W values, p the channel's first value (a pivot inside the data, so the one-pass
//      variance s2/n - (s1/n)^2 does not cancel for a large mean); fp32 per thread and per
//      block (fp64 for fp64), a fixed shuffle-and-shared-memory tree inside the block;
//   2. finalize, one thread per channel: the split partials added in order (in double: at
//      most a few hundred values), mean, 1/std, and a = 1/std * weight, b = bias - mean * a;
//   3. one elementwise pass y = act(round(z * a + b)).
// Training backward (bn_act_train_backward): BN's output is recomputed from z (only z is kept
// for backward); 1. partial sums of g' and g' * (z - mean), g' = act'(round(bn)) * grad;
// 2. finalize: grad_weight = dot / std, grad_bias = sum(g'), and ATen's training-backward
// coefficients; 3. grad_z = (g' - sum/N - (z - mean) * dot / (std^2 N)) * weight / std.
//
// Reductions: many blocks per channel (`split`, from bn_act_split) each writing its partial
// to a workspace, then the tiny finalize pass adds them in a fixed order. No atomics: the
// statistics feed the running statistics and every gradient, and fp32 atomics would make them
// differ run to run in the last bits; the second pass costs one launch over split * C values.
// Rounding: BN's output is rounded to z's dtype before the activation (and its derivative)
// reads it, as eager stores it; the gradient w.r.t. it stays in the accumulation type, as in
// the CPU kernel (csrc/cpu/conv_bn_act.cpp says why).
// Elementwise passes move 16 bytes per access where the layout allows (every pack inside one
// plane (NCHW) or one pixel's channels (NHWC), pointers 16-byte aligned), else one element;
// they find each element's channel by carries, without a 64-bit division per element.
// Indices are int64 throughout (maps past 2^31 elements).
// Status: compile-checked with nvcc for sm_90 and run under the CPU emulation
// (tests/test_conv_bn_act_cuda_emu.py); not yet run or tuned on a GPU (block sizes and the
// split heuristic are priors).
#include "cuda_math.cuh"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;

// ---- device helpers --------------------------------------------------------------------------

// BN's output as eager stores it: z * a + b in the accumulation type, rounded to T.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type bn_out(typename Acc<T>::type z,
                                                        typename Acc<T>::type a,
                                                        typename Acc<T>::type b) {
  return to_acc(from_acc<T>(z * a + b));
}

// The gradient w.r.t. BN's output (the activation's derivative at the recomputed output, that
// output rounded to T as eager stores it), kept in the accumulation type.
template <typename T>
__device__ __forceinline__ typename Acc<T>::type grad_bn(typename Acc<T>::type g,
                                                         typename Acc<T>::type z,
                                                         typename Acc<T>::type a,
                                                         typename Acc<T>::type b, int act) {
  using A = typename Acc<T>::type;
  if (act == int(Act::kNone)) return g;
  return act_backward<A>(g, bn_out<T>(z, a, b), act);
}

// The rows r = n * hw + i of one NCHW channel visited from `start` by `step`: the plane n and
// the offset i inside it by carries, one division at the start.
struct PlaneWalker {
  int64_t n, i, dn, di, hw;
  __device__ PlaneWalker(int64_t start, int64_t step, int64_t hw_)
      : n(start / hw_), i(start % hw_), dn(step / hw_), di(step % hw_), hw(hw_) {}
  __device__ void advance() {
    i += di;
    n += dn;
    if (i >= hw) {
      i -= hw;
      ++n;
    }
  }
};

// The channel of flat offsets start, start + step, ... of a contiguous NCHW (c = (j / hw) % C)
// or NHWC (c = j % C) map, by carries: one division at the start.
template <bool CL>
struct ChannelWalker {
  int64_t ch, rem, dch, drem, c, hw;
  __device__ ChannelWalker(int64_t start, int64_t step, int64_t c_, int64_t hw_) : c(c_), hw(hw_) {
    if constexpr (CL) {
      ch = start % c, dch = step % c, rem = drem = 0;
    } else {
      ch = (start / hw) % c, rem = start % hw, dch = (step / hw) % c, drem = step % hw;
    }
  }
  __device__ void advance() {
    int64_t carry = 0;
    if constexpr (!CL) {
      rem += drem;
      if (rem >= hw) {
        rem -= hw;
        carry = 1;
      }
    }
    ch += dch + carry;  // < 2C: one wrap at most
    if (ch >= c) ch -= c;
  }
};

// Adds the two running sums of a channel's element at `off` (z and, for GRAD, grad):
// forward (z - center, (z - center)^2) with center the pivot; backward (g', g' * (z - center))
// with center the mean.
template <typename T, bool GRAD>
__device__ __forceinline__ void add_terms(const T* z, const T* g, int64_t off,
                                          typename Acc<T>::type center, typename Acc<T>::type a,
                                          typename Acc<T>::type b, int act,
                                          typename Acc<T>::type& s1, typename Acc<T>::type& s2) {
  using A = typename Acc<T>::type;
  const A zv = to_acc(z[off]);
  if constexpr (GRAD) {
    const A gb = grad_bn<T>(to_acc(g[off]), zv, a, b, act);
    s1 += gb;
    s2 += gb * (zv - center);
  } else {
    const A d = zv - center;
    s1 += d;
    s2 += d * d;
  }
}

// The backward's per-channel inputs, (C,) each in the accumulation type (null in forward).
template <typename A>
struct BnParams {
  const A* mean;
  const A* invstd;
  const A* weight;
  const A* bias;
};

// The per-channel constants a reduction block needs: forward the pivot (z's first value of
// the channel), backward the mean and a = invstd * weight, b = bias - mean * a.
template <typename T, bool GRAD>
struct ChannelConsts {
  using A = typename Acc<T>::type;
  A center, a, b;
  __device__ ChannelConsts(const T* z, int64_t first, const BnParams<A>& p, int64_t ch) {
    if constexpr (GRAD) {
      center = p.mean[ch];
      a = p.invstd[ch] * p.weight[ch];
      b = p.bias[ch] - center * a;
    } else {
      center = to_acc(z[first]);
      a = b = A(0);
    }
  }
};

// ---- reductions: partial sums per (range of rows, channel) -----------------------------------
// part holds 2 * split * C values: sum 1 of range k, channel c at k * C + c, sum 2 after them.

// This block's range [r0, r1) of a channel's rows (blockIdx.y of gridDim.y ranges).
struct RowRange {
  int64_t r0, r1;
  __device__ RowRange(int64_t rows, int64_t per) {
    r0 = int64_t(blockIdx.y) * per;
    r1 = r0 + per < rows ? r0 + per : rows;
  }
};

template <typename A>
__device__ __forceinline__ void store_partials(A* part, int64_t c, int64_t ch, A t1, A t2) {
  part[int64_t(blockIdx.y) * c + ch] = t1;
  part[(int64_t(gridDim.y) + blockIdx.y) * c + ch] = t2;
}

// NCHW: a block per (channel, range); its threads (a multiple of 32, at most 256: no more
// than the range has rows) walk the range's rows (coalesced inside each plane) and meet
// through warp shuffles and shared memory, in a fixed order.
template <typename T, bool GRAD>
__global__ void bn_reduce_nchw_kernel(const T* __restrict__ z, const T* __restrict__ g,
                                      BnParams<typename Acc<T>::type> p,
                                      typename Acc<T>::type* __restrict__ part, int64_t c,
                                      int64_t hw, int64_t rows, int64_t rows_per_split, int act) {
  using A = typename Acc<T>::type;
  __shared__ A warp_part[kWarps][2];
  const int64_t ch = blockIdx.x;
  const ChannelConsts<T, GRAD> k(z, ch * hw, p, ch);
  const RowRange rr(rows, rows_per_split);
  const int64_t chw = c * hw, base = ch * hw;
  A s1 = A(0), s2 = A(0);
  if (rr.r0 + threadIdx.x < rr.r1) {
    PlaneWalker w(rr.r0 + threadIdx.x, blockDim.x, hw);
    for (int64_t r = rr.r0 + threadIdx.x; r < rr.r1; r += blockDim.x, w.advance())
      add_terms<T, GRAD>(z, g, w.n * chw + base + w.i, k.center, k.a, k.b, act, s1, s2);
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  const int warp = threadIdx.x / kWarp;
  if (threadIdx.x % kWarp == 0) warp_part[warp][0] = s1, warp_part[warp][1] = s2;
  __syncthreads();
  if (threadIdx.x == 0) {
    A t1 = A(0), t2 = A(0);
#pragma unroll
    for (int k2 = 0; k2 < kWarps; ++k2) {
      if (k2 * kWarp >= int(blockDim.x)) break;
      t1 += warp_part[k2][0], t2 += warp_part[k2][1];
    }
    store_partials(part, c, ch, t1, t2);
  }
}

// NHWC: a block covers 32 channels (threadIdx.x: coalesced along C) and walks its range's rows
// 8 at a time (threadIdx.y); the 8 row partials meet in shared memory in a fixed order.
constexpr int kRowLanes = kThreads / kWarp;

template <typename T, bool GRAD>
__global__ void bn_reduce_nhwc_kernel(const T* __restrict__ z, const T* __restrict__ g,
                                      BnParams<typename Acc<T>::type> p,
                                      typename Acc<T>::type* __restrict__ part, int64_t c,
                                      int64_t rows, int64_t rows_per_split, int act) {
  using A = typename Acc<T>::type;
  __shared__ A lane_part[2][kRowLanes][kWarp];
  const int64_t ch = int64_t(blockIdx.x) * kWarp + threadIdx.x;
  const RowRange rr(rows, rows_per_split);
  A s1 = A(0), s2 = A(0);
  if (ch < c) {
    const ChannelConsts<T, GRAD> k(z, ch, p, ch);
    for (int64_t r = rr.r0 + threadIdx.y; r < rr.r1; r += kRowLanes)
      add_terms<T, GRAD>(z, g, r * c + ch, k.center, k.a, k.b, act, s1, s2);
  }
  lane_part[0][threadIdx.y][threadIdx.x] = s1;
  lane_part[1][threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    A t1 = A(0), t2 = A(0);
#pragma unroll
    for (int k2 = 0; k2 < kRowLanes; ++k2) t1 += lane_part[0][k2][threadIdx.x], t2 += lane_part[1][k2][threadIdx.x];
    store_partials(part, c, ch, t1, t2);
  }
}

// ---- finalize: one thread per channel ---------------------------------------------------------

// Forward: mean, invstd and the affine coefficients a, b from the partial shifted sums.
template <typename T>
__global__ void bn_stats_finalize_kernel(const T* __restrict__ z,
                                         const typename Acc<T>::type* __restrict__ part,
                                         const typename Acc<T>::type* __restrict__ weight,
                                         const typename Acc<T>::type* __restrict__ bias,
                                         typename Acc<T>::type* __restrict__ mean,
                                         typename Acc<T>::type* __restrict__ invstd,
                                         typename Acc<T>::type* __restrict__ coef_a,
                                         typename Acc<T>::type* __restrict__ coef_b, int64_t c,
                                         int64_t split, int64_t rows, int64_t pivot_stride,
                                         double eps) {
  using A = typename Acc<T>::type;
  const int64_t ch = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (ch >= c) return;
  double s1 = 0.0, s2 = 0.0;
  for (int64_t k = 0; k < split; ++k) s1 += double(part[k * c + ch]), s2 += double(part[(split + k) * c + ch]);
  const double m1 = s1 / double(rows);
  double var = s2 / double(rows) - m1 * m1;
  var = var > 0.0 ? var : 0.0;
  const A m = static_cast<A>(double(to_acc(z[ch * pivot_stride])) + m1);
  const A is = static_cast<A>(1.0 / sqrt(var + eps));
  mean[ch] = m;
  invstd[ch] = is;
  const A a = is * weight[ch];
  coef_a[ch] = a;
  coef_b[ch] = bias[ch] - m * a;
}

// Backward: grad_weight, grad_bias and grad_z's coefficients from the partial sums of g' and
// g' * (z - mean). ATen's training backward: dz = (g' - sum/N - (z - mean) * dot * invstd^2 / N)
// * invstd * weight. coef holds a, b (to recompute BN's output), k = dot * invstd^2 / N and
// gmean = sum / N, C values each.
template <typename A>
__global__ void bn_grad_finalize_kernel(const A* __restrict__ part, const A* __restrict__ weight,
                                        const A* __restrict__ bias, const A* __restrict__ mean,
                                        const A* __restrict__ invstd, A* __restrict__ grad_weight,
                                        A* __restrict__ grad_bias, A* __restrict__ coef, int64_t c,
                                        int64_t split, int64_t rows) {
  const int64_t ch = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (ch >= c) return;
  double sum = 0.0, dot = 0.0;
  for (int64_t k = 0; k < split; ++k) sum += double(part[k * c + ch]), dot += double(part[(split + k) * c + ch]);
  const double is = double(invstd[ch]);
  grad_weight[ch] = static_cast<A>(dot * is);
  grad_bias[ch] = static_cast<A>(sum);
  const A a = invstd[ch] * weight[ch];
  coef[ch] = a;
  coef[c + ch] = bias[ch] - mean[ch] * a;
  coef[2 * c + ch] = static_cast<A>(dot * is * is / double(rows));
  coef[3 * c + ch] = static_cast<A>(sum / double(rows));
}

// ---- elementwise passes (grid-stride over packs of kVec elements) ----------------------------

// Calls f(p, ch) for this thread's packs p of a grid-stride loop, ch the channel of the pack's
// first element (NHWC: element k of the pack is channel ch + k; NCHW: all are ch).
template <int kVec, bool CL, typename F>
__device__ __forceinline__ void for_each_pack(int64_t packs, int64_t c, int64_t hw, F&& f) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  if (start >= packs) return;
  ChannelWalker<CL> w(start * kVec, step * kVec, c, hw);
  for (int64_t p = start; p < packs; p += step, w.advance()) f(p, w.ch);
}

// y = act(round(z * a[c] + b[c])).
template <typename T, int kVec, bool CL>
__global__ void bn_act_normalize_kernel(const T* __restrict__ z, T* __restrict__ y,
                                        const typename Acc<T>::type* __restrict__ coef_a,
                                        const typename Acc<T>::type* __restrict__ coef_b,
                                        int64_t packs, int64_t c, int64_t hw, int act) {
  using A = typename Acc<T>::type;
  for_each_pack<kVec, CL>(packs, c, hw, [&](int64_t p, int64_t ch0) {
    const Pack<T, kVec> in = reinterpret_cast<const Pack<T, kVec>*>(z)[p];
    Pack<T, kVec> out;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t ch = CL ? ch0 + k : ch0;
      out.v[k] = from_acc<T>(act_forward<A>(bn_out<T>(to_acc(in.v[k]), coef_a[ch], coef_b[ch]), act));
    }
    reinterpret_cast<Pack<T, kVec>*>(y)[p] = out;
  });
}

// grad_z = (g' - gmean[c] - (z - mean[c]) * k[c]) * a[c]; coef as bn_grad_finalize_kernel's.
template <typename T, int kVec, bool CL>
__global__ void bn_act_grad_z_kernel(const T* __restrict__ g, const T* __restrict__ z,
                                     T* __restrict__ gz, const typename Acc<T>::type* __restrict__ mean,
                                     const typename Acc<T>::type* __restrict__ coef, int64_t packs,
                                     int64_t c, int64_t hw, int act) {
  using A = typename Acc<T>::type;
  for_each_pack<kVec, CL>(packs, c, hw, [&](int64_t p, int64_t ch0) {
    const Pack<T, kVec> gi = reinterpret_cast<const Pack<T, kVec>*>(g)[p];
    const Pack<T, kVec> zi = reinterpret_cast<const Pack<T, kVec>*>(z)[p];
    Pack<T, kVec> out;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t ch = CL ? ch0 + k : ch0;
      const A a = coef[ch], zv = to_acc(zi.v[k]);
      const A gb = grad_bn<T>(to_acc(gi.v[k]), zv, a, coef[c + ch], act);
      out.v[k] = from_acc<T>((gb - coef[3 * c + ch] - (zv - mean[ch]) * coef[2 * c + ch]) * a);
    }
    reinterpret_cast<Pack<T, kVec>*>(gz)[p] = out;
  });
}

// The inference epilogue, in place: y = act(round(y + bias[c])) (bias may be null). The sum is
// rounded before the activation reads it, as eager's bias add stores it.
template <typename T, int kVec, bool CL>
__global__ void bias_act_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t packs,
                                int64_t c, int64_t hw, int act) {
  using A = typename Acc<T>::type;
  for_each_pack<kVec, CL>(packs, c, hw, [&](int64_t p, int64_t ch0) {
    Pack<T, kVec> v = reinterpret_cast<const Pack<T, kVec>*>(y)[p];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t ch = CL ? ch0 + k : ch0;
      const A pre = bias ? to_acc(from_acc<T>(to_acc(v.v[k]) + to_acc(bias[ch]))) : to_acc(v.v[k]);
      v.v[k] = from_acc<T>(act_forward<A>(pre, act));
    }
    reinterpret_cast<Pack<T, kVec>*>(y)[p] = v;
  });
}

// ---- launch helpers --------------------------------------------------------------------------

// Whether packs of 16 bytes keep to one channel's plane (NCHW) or one pixel's channels (NHWC).
template <typename T>
bool vector_ok(int64_t c, int64_t hw, bool channels_last, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(T);
  if ((channels_last ? c : hw) % kVec != 0) return false;
  for (const void* p : ptrs)
    if (!aligned(p, 16)) return false;
  return true;
}

// Calls f.template operator()<kVec, CL>() with the widest pack the layout allows (vec) and
// the layout, so each pass names its kernel and arguments once.
template <typename T, typename F>
void dispatch_elementwise(bool vec, bool channels_last, F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  if (vec) {
    if (channels_last) f.template operator()<kVec, true>();
    else f.template operator()<kVec, false>();
  } else {
    if (channels_last) f.template operator()<1, true>();
    else f.template operator()<1, false>();
  }
}

// Rows of a range: ceil(rows / split).
int64_t rows_per_split(const BnShape& s) { return (s.n * s.hw + s.split - 1) / s.split; }

// The reduction pass: partial sums of forward (GRAD false) or backward terms into part.
template <typename T, bool GRAD>
void launch_reduce(const T* z, const T* g, const BnParams<typename Acc<T>::type>& p,
                   typename Acc<T>::type* part, const BnShape& s, int act, cudaStream_t stream) {
  const int64_t rows = s.n * s.hw, per = rows_per_split(s);
  if (s.channels_last) {
    const dim3 grid(static_cast<unsigned>((s.c + kWarp - 1) / kWarp), static_cast<unsigned>(s.split));
    FB_LAUNCH(grid, dim3(kWarp, kRowLanes), 0, stream, bn_reduce_nhwc_kernel<T, GRAD>)(
        z, g, p, part, s.c, rows, per, act);
  } else {
    const dim3 grid(static_cast<unsigned>(s.c), static_cast<unsigned>(s.split));
    // a batch-1 7x7 map has 49 rows per channel: 64 threads, not 256 mostly idle ones
    const int threads = static_cast<int>(per >= kThreads ? kThreads : (per + kWarp - 1) / kWarp * kWarp);
    FB_LAUNCH(grid, threads, 0, stream, bn_reduce_nchw_kernel<T, GRAD>)(
        z, g, p, part, s.c, s.hw, rows, per, act);
  }
}

unsigned channel_blocks(int64_t c) { return static_cast<unsigned>((c + kThreads - 1) / kThreads); }

template <typename T>
cudaError_t forward_typed(const void* z_, const void* weight_, const void* bias_, void* y_,
                          void* mean_, void* invstd_, void* workspace, const BnShape& s,
                          double eps, int act, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const T* z = static_cast<const T*>(z_);
  const A* weight = static_cast<const A*>(weight_);
  const A* bias = static_cast<const A*>(bias_);
  A* mean = static_cast<A*>(mean_);
  A* invstd = static_cast<A*>(invstd_);
  A* part = static_cast<A*>(workspace);
  A* coef = part + 2 * s.split * s.c;
  launch_reduce<T, false>(z, nullptr, BnParams<A>{}, part, s, act, stream);
  FB_LAUNCH(channel_blocks(s.c), kThreads, 0, stream, bn_stats_finalize_kernel<T>)(
      z, part, weight, bias, mean, invstd, coef, coef + s.c, s.c, s.split, s.n * s.hw,
      s.channels_last ? int64_t(1) : s.hw, eps);
  const int64_t numel = s.n * s.c * s.hw;
  T* y = static_cast<T*>(y_);
  dispatch_elementwise<T>(vector_ok<T>(s.c, s.hw, s.channels_last, {z, y}), s.channels_last,
                          [&]<int V, bool CL>() {
    FB_LAUNCH(grid_stride_blocks(numel / V, kThreads), kThreads, 0, stream, bn_act_normalize_kernel<T, V, CL>)(
        z, y, coef, coef + s.c, numel / V, s.c, s.hw, act);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_typed(const void* grad_, const void* z_, const void* weight_,
                           const void* bias_, const void* mean_, const void* invstd_,
                           void* grad_z_, void* grad_weight_, void* grad_bias_, void* workspace,
                           const BnShape& s, int act, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const T* g = static_cast<const T*>(grad_);
  const T* z = static_cast<const T*>(z_);
  const A* weight = static_cast<const A*>(weight_);
  const A* bias = static_cast<const A*>(bias_);
  const A* mean = static_cast<const A*>(mean_);
  const A* invstd = static_cast<const A*>(invstd_);
  A* part = static_cast<A*>(workspace);
  A* coef = part + 2 * s.split * s.c;
  launch_reduce<T, true>(z, g, BnParams<A>{mean, invstd, weight, bias}, part, s, act, stream);
  FB_LAUNCH(channel_blocks(s.c), kThreads, 0, stream, bn_grad_finalize_kernel<A>)(
      part, weight, bias, mean, invstd, static_cast<A*>(grad_weight_), static_cast<A*>(grad_bias_),
      coef, s.c, s.split, s.n * s.hw);
  if (grad_z_ != nullptr) {
    const int64_t numel = s.n * s.c * s.hw;
    T* gz = static_cast<T*>(grad_z_);
    dispatch_elementwise<T>(vector_ok<T>(s.c, s.hw, s.channels_last, {g, z, gz}), s.channels_last,
                            [&]<int V, bool CL>() {
      FB_LAUNCH(grid_stride_blocks(numel / V, kThreads), kThreads, 0, stream, bn_act_grad_z_kernel<T, V, CL>)(
          g, z, gz, mean, coef, numel / V, s.c, s.hw, act);
    });
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t bias_act_typed(void* y_, const void* bias_, int64_t n, int64_t c, int64_t hw,
                           bool channels_last, int act, cudaStream_t stream) {
  T* y = static_cast<T*>(y_);
  const T* bias = static_cast<const T*>(bias_);
  const int64_t numel = n * c * hw;
  dispatch_elementwise<T>(vector_ok<T>(c, hw, channels_last, {y}), channels_last, [&]<int V, bool CL>() {
    FB_LAUNCH(grid_stride_blocks(numel / V, kThreads), kThreads, 0, stream, bias_act_kernel<T, V, CL>)(
        y, bias, numel / V, c, hw, act);
  });
  return cudaGetLastError();
}

bool shape_ok(const BnShape& s) {
  // gridDim.x holds the channels (NCHW reduction), gridDim.y the ranges
  return s.n >= 0 && s.c >= 0 && s.c <= int64_t(0x7fffffff) && s.hw >= 0 && s.split >= 1 &&
         s.split <= 65535;
}

}  // namespace

int64_t bn_act_split(int64_t n, int64_t c, int64_t hw, bool channels_last) {
  // Prior, not tuned (no GPU run yet): aim at four blocks per SM of a 132-SM H100/H200, each
  // range keeping at least 1024 rows (NCHW: 4 per thread) or 128 (NHWC: 16 per row lane).
  const int64_t base = channels_last ? (c + kWarp - 1) / kWarp : c;
  int64_t split = base >= 528 ? 1 : (528 + base - 1) / (base > 0 ? base : 1);
  const int64_t min_rows = channels_last ? 128 : 1024;
  const int64_t most = n * hw / min_rows > 1 ? n * hw / min_rows : 1;
  if (split > most) split = most;
  if (split > 65535) split = 65535;  // gridDim.y limit
  return split < 1 ? 1 : split;
}

int64_t bn_act_workspace_bytes(const BnShape& s, DType dtype) {
  const int64_t acc = dtype == DType::kFloat64 ? 8 : 4;
  return (2 * s.split + 4) * s.c * acc;
}

cudaError_t bn_act_train_forward(const void* z, const void* weight, const void* bias, void* y,
                                 void* mean, void* invstd, void* workspace, const BnShape& s,
                                 double eps, int act, DType dtype, cudaStream_t stream) {
  if (!shape_ok(s) || act < 0 || act >= kNumActs || s.n * s.hw < 1) return cudaErrorInvalidValue;
  if (s.c == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(z, weight, bias, y, mean, invstd, workspace, s, eps, act, stream);
    case DType::kFloat16: return forward_typed<__half>(z, weight, bias, y, mean, invstd, workspace, s, eps, act, stream);
    case DType::kBFloat16: return forward_typed<__nv_bfloat16>(z, weight, bias, y, mean, invstd, workspace, s, eps, act, stream);
    case DType::kFloat64: return forward_typed<double>(z, weight, bias, y, mean, invstd, workspace, s, eps, act, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t bn_act_train_backward(const void* grad, const void* z, const void* weight,
                                  const void* bias, const void* mean, const void* invstd,
                                  void* grad_z, void* grad_weight, void* grad_bias,
                                  void* workspace, const BnShape& s, int act, DType dtype,
                                  cudaStream_t stream) {
  if (!shape_ok(s) || act < 0 || act >= kNumActs || s.n * s.hw < 1) return cudaErrorInvalidValue;
  if (s.c == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return backward_typed<float>(grad, z, weight, bias, mean, invstd, grad_z, grad_weight, grad_bias, workspace, s, act, stream);
    case DType::kFloat16: return backward_typed<__half>(grad, z, weight, bias, mean, invstd, grad_z, grad_weight, grad_bias, workspace, s, act, stream);
    case DType::kBFloat16: return backward_typed<__nv_bfloat16>(grad, z, weight, bias, mean, invstd, grad_z, grad_weight, grad_bias, workspace, s, act, stream);
    case DType::kFloat64: return backward_typed<double>(grad, z, weight, bias, mean, invstd, grad_z, grad_weight, grad_bias, workspace, s, act, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t bias_act_forward(void* y, const void* bias, int64_t n, int64_t c, int64_t hw,
                             bool channels_last, int act, DType dtype, cudaStream_t stream) {
  if (n < 0 || c < 0 || hw < 0 || act < 0 || act >= kNumActs) return cudaErrorInvalidValue;
  if (n * c * hw == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return bias_act_typed<float>(y, bias, n, c, hw, channels_last, act, stream);
    case DType::kFloat16: return bias_act_typed<__half>(y, bias, n, c, hw, channels_last, act, stream);
    case DType::kBFloat16: return bias_act_typed<__nv_bfloat16>(y, bias, n, c, hw, channels_last, act, stream);
    case DType::kFloat64: return bias_act_typed<double>(y, bias, n, c, hw, channels_last, act, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
