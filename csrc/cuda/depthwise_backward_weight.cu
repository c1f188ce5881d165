// depthwise_backward_weight: grad_w (C*m, 1, KH, KW) from grad and x (launchers.h).
// Deterministic, no atomics: blocks (channel, chunk) reduce a chunk of the N*OH*OW positions
// into partial sums ws[S][C*m][KH*KW] (acc_t) with a fixed-order tree; a second kernel sums
// over S. Fixed-size NCHW and NHWC kernels reuse each loaded x value for several outputs; a
// generic kernel takes any size, layout and int64 coordinates. S depends on the shape alone, so
// the binding can size the workspace (depthwise_backward_weight_workspace) before launching.
// Names starting bww_ / Bww belong to this backward-weight pass.
#include <algorithm>
#include <cstdint>

#include "depthwise_common.cuh"

namespace fastblocks::cuda {
namespace {

// Blocks that keep all SMs of an H100 (132) busy a few times over; sizes the S chunks of the
// weight gradient. A shape-only constant: the workspace size must not depend on the device.
constexpr int64_t kTargetBlocks = 132 * 4;

// Sums NACC accumulators over the `nmembers` threads that share `lane` (a fixed-order tree in
// shared memory: deterministic) and calls store(lane, t, sum) from member 0. Every thread of
// the block must call it. buf holds 8 * nmembers * nlanes <= 8 * kThreads values.
template <int NACC, typename acc_t, typename Store>
__device__ __forceinline__ void reduce_members(const acc_t (&acc)[NACC], acc_t* buf, int lane,
                                               int nlanes, int member, int nmembers,
                                               Store store) {
#pragma unroll
  for (int t0 = 0; t0 < NACC; t0 += 8) {
    __syncthreads();  // buf is free (earlier passes and callers are done reading it)
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (t0 + q < NACC) buf[(q * nmembers + member) * nlanes + lane] = acc[t0 + q];
    __syncthreads();
    // Invariant: after the pass for `half`, members [0, min(nmembers, half)) hold the sums.
    for (int half = kThreads / 2; half > 0; half >>= 1) {
      if (member < half && member + half < nmembers) {
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (t0 + q < NACC)
            buf[(q * nmembers + member) * nlanes + lane] +=
                buf[(q * nmembers + member + half) * nlanes + lane];
      }
      __syncthreads();
    }
    if (member == 0) {
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if (t0 + q < NACC) store(lane, t0 + q, buf[q * nmembers * nlanes + lane]);
    }
  }
}

// Chunk `chunk` of `chunks` over [0, units): [units*chunk/chunks, units*(chunk+1)/chunks).
__device__ __forceinline__ void chunk_range(int64_t units, int64_t chunk, int64_t chunks,
                                            int64_t& begin, int64_t& end) {
  begin = units * chunk / chunks;
  end = units * (chunk + 1) / chunks;
}

// NCHW, fixed sizes. Block (oc, chunk); threads (tx along OW, ty over strips of U rows). A strip
// reuses each loaded x value for all of its U rows; units are (n, strip) pairs.
template <typename T, int KH, int KW, int S, int U>
__global__ void __launch_bounds__(kThreads)
    bww_nchw_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                    typename Acc<T>::type* __restrict__ ws, const Conv p, const int64_t chunks,
                    const Div64 div_spn) {
  using acc_t = typename Acc<T>::type;
  constexpr int kKK = KH * KW;
  __shared__ acc_t buf[8 * kThreads];
  const int64_t oc = blockIdx.x, chunk = blockIdx.y;
  const int64_t ic = oc / p.mult;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int nthreads = blockDim.x * blockDim.y;
  const int64_t spn = ceil_div(p.out_h, U);
  int64_t u_begin, u_end;
  chunk_range(p.n * spn, chunk, chunks, u_begin, u_end);
  acc_t acc[kKK];
#pragma unroll
  for (int t = 0; t < kKK; ++t) acc[t] = acc_t(0);

  for (int64_t unit = u_begin + ty; unit < u_end; unit += blockDim.y) {
    const int64_t nn = div_spn.div(unit);
    const int oy0 = int(unit - nn * spn) * U;
    const T* gp = grad + ((nn * p.out_c + oc) * p.out_h + oy0) * p.out_w;
    const T* xp = x + (nn * p.in_c + ic) * p.in_h * p.in_w;
    for (int ox = tx; ox < p.out_w; ox += blockDim.x) {
      acc_t g[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        g[u] = oy0 + u < p.out_h ? to_acc(gp[int64_t(u) * p.out_w + ox]) : acc_t(0);
      const int iyb = oy0 * S - p.ph, ixb = ox * S - p.pw;
#pragma unroll
      for (int r = 0; r < (U - 1) * S + KH; ++r) {
        const int iy = iyb + r;
        if (iy < 0 || iy >= p.in_h) continue;
#pragma unroll
        for (int j = 0; j < KW; ++j) {
          const int ix = ixb + j;
          if (ix < 0 || ix >= p.in_w) continue;
          const acc_t v = to_acc(xp[int64_t(iy) * p.in_w + ix]);
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int i = r - u * S;
            if (i >= 0 && i < KH) acc[i * KW + j] += g[u] * v;
          }
        }
      }
    }
  }
  acc_t* dst = ws + (chunk * p.out_c + oc) * kKK;
  reduce_members<kKK>(acc, buf, 0, 1, ty * blockDim.x + tx, nthreads,
                      [&](int, int t, acc_t v) { dst[t] = v; });
}

// NHWC, fixed sizes. Block (channel block, chunk); threads (tx over channel groups of VC,
// ty over pixel groups of PW along W); units are (n, oy, pixel group) triples.
template <typename T, int KH, int KW, int S, int VC, int PW>
__global__ void __launch_bounds__(kThreads)
    bww_nhwc_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                    typename Acc<T>::type* __restrict__ ws, const Conv p, const int64_t chunks,
                    const int64_t cgroups, const int64_t owg_n, const Div64 div_owg,
                    const Div64 div_oh) {
  using acc_t = typename Acc<T>::type;
  using P = Pack<T, VC>;
  constexpr int kKK = KH * KW;
  __shared__ acc_t buf[8 * kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t cg = int64_t(blockIdx.x) * blockDim.x + tx, chunk = blockIdx.y;
  const bool valid = cg < cgroups;  // invalid threads still join the reduction
  const int64_t c0 = cg * VC, ic0 = c0 / p.mult;
  int64_t u_begin, u_end;
  chunk_range(p.n * p.out_h * owg_n, chunk, chunks, u_begin, u_end);
  acc_t acc[VC * kKK];
#pragma unroll
  for (int t = 0; t < VC * kKK; ++t) acc[t] = acc_t(0);

  for (int64_t unit = u_begin + ty; valid && unit < u_end; unit += blockDim.y) {
    const int64_t row = div_owg.div(unit);
    const int ox0 = int(unit - row * owg_n) * PW;
    const int64_t nn = div_oh.div(row);
    const int oy = int(row - nn * p.out_h);
    acc_t g[PW][VC];
#pragma unroll
    for (int pp = 0; pp < PW; ++pp) {
      P gv;
      if (ox0 + pp < p.out_w) {
        gv = *reinterpret_cast<const P*>(grad + (row * p.out_w + ox0 + pp) * p.out_c + c0);
      } else {
#pragma unroll
        for (int q = 0; q < VC; ++q) gv.v[q] = from_acc<T>(acc_t(0));
      }
#pragma unroll
      for (int q = 0; q < VC; ++q) g[pp][q] = to_acc(gv.v[q]);
    }
    const T* base = x + nn * p.in_h * p.in_w * p.in_c + ic0;
    const int iyb = oy * S - p.ph, ixb = ox0 * S - p.pw;
#pragma unroll
    for (int i = 0; i < KH; ++i) {
      const int iy = iyb + i;
      if (iy < 0 || iy >= p.in_h) continue;
      const T* rowp = base + int64_t(iy) * p.in_w * p.in_c;
#pragma unroll
      for (int cx = 0; cx < (PW - 1) * S + KW; ++cx) {
        const int ix = ixb + cx;
        if (ix < 0 || ix >= p.in_w) continue;
        const P v = *reinterpret_cast<const P*>(rowp + int64_t(ix) * p.in_c);
#pragma unroll
        for (int pp = 0; pp < PW; ++pp) {
          const int j = cx - pp * S;
          if (j >= 0 && j < KW) {
#pragma unroll
            for (int q = 0; q < VC; ++q) acc[q * kKK + i * KW + j] += g[pp][q] * to_acc(v.v[q]);
          }
        }
      }
    }
  }
  acc_t* dst = ws + chunk * p.out_c * kKK;
  const int64_t cb0 = int64_t(blockIdx.x) * blockDim.x * VC;  // first channel of the block
  reduce_members<VC * kKK>(acc, buf, tx, blockDim.x, ty, blockDim.y,
                           [&](int lane, int t, acc_t v) {
                             const int64_t c = cb0 + int64_t(lane) * VC + t / kKK;
                             if (c < p.out_c) dst[c * kKK + t % kKK] = v;
                           });
}

// Any size and layout, int64 coordinates. Block (oc, chunk) over positions (n, oy, ox); taps
// are taken 8 at a time so the accumulators stay in registers (grad is re-read per group).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bww_generic_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                       typename Acc<T>::type* __restrict__ ws, const Conv p, const bool cl,
                       const int64_t chunks, const Div64 div_ow, const Div64 div_oh) {
  using acc_t = typename Acc<T>::type;
  __shared__ acc_t buf[8 * kThreads];
  const int64_t oc = blockIdx.x, chunk = blockIdx.y;
  const int64_t ic = oc / p.mult;
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int64_t kk = int64_t(p.kh) * p.kw;
  int64_t q_begin, q_end;
  chunk_range(p.n * p.out_h * p.out_w, chunk, chunks, q_begin, q_end);
  acc_t* dst = ws + (chunk * p.out_c + oc) * kk;
  for (int64_t t0 = 0; t0 < kk; t0 += 8) {  // uniform: every thread runs every group
    acc_t acc[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) acc[t] = acc_t(0);
    const int i0 = int(t0 / p.kw), j0 = int(t0 - int64_t(i0) * p.kw);
    for (int64_t q = q_begin + tid; q < q_end; q += nthreads) {
      const int64_t r = div_ow.div(q), nn = div_oh.div(r);
      const int64_t ox = q - r * p.out_w, oy = r - nn * p.out_h;
      const acc_t g = to_acc(grad[offset4(nn, oc, oy, ox, p.out_c, p.out_h, p.out_w, cl)]);
      int i = i0, j = j0;
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        if (t0 + t < kk) {
          const int64_t iy = oy * p.sh - p.ph + int64_t(i) * p.dh;
          const int64_t ix = ox * p.sw - p.pw + int64_t(j) * p.dw;
          if (iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w)
            acc[t] += g * to_acc(x[offset4(nn, ic, iy, ix, p.in_c, p.in_h, p.in_w, cl)]);
        }
        if (++j == p.kw) {
          j = 0;
          ++i;
        }
      }
    }
    reduce_members<8>(acc, buf, 0, 1, tid, nthreads, [&](int, int t, acc_t v) {
      if (t0 + t < kk) dst[t0 + t] = v;
    });
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bww_finalize_kernel(const typename Acc<T>::type* __restrict__ ws, T* __restrict__ gw,
                        const int64_t chunks, const int64_t total) {
  using acc_t = typename Acc<T>::type;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t c = 0; c < chunks; ++c) sum += ws[c * total + idx];
    gw[idx] = from_acc<T>(sum);
  }
}

enum class BwwKind { kNchw, kNhwc, kGeneric };
BwwKind bww_kind(const DepthwiseShape& s) {
  if (!small_coords(s) || fixed_k(s) == 0 || fixed_stride(s) == 0) return BwwKind::kGeneric;
  return s.channels_last ? BwwKind::kNhwc : BwwKind::kNchw;
}

// Chunks S of the weight gradient, from the shape alone (the workspace query has no dtype or
// pointers): enough (channel block, chunk) blocks to fill the device, each with >= ~2K positions
// so the end-of-block tree reduction stays a small part of the block's work.
int64_t bww_chunks(const DepthwiseShape& s) {
  const int64_t oc = s.c * s.mult, positions = s.n * s.oh * s.ow;
  if (oc <= 0 || s.kh * s.kw <= 0 || positions <= 0) return 0;
  const int64_t cblocks = bww_kind(s) == BwwKind::kNhwc ? ceil_div(oc, 64) : oc;
  int64_t chunks = ceil_div(kTargetBlocks, cblocks);
  chunks = std::min(chunks, ceil_div(positions, 2048));
  return std::max<int64_t>(1, chunks);
}

template <typename T>
cudaError_t backward_weight_impl(const void* gv, const void* xv, void* gwv, void* wsv,
                                 const DepthwiseShape& s, cudaStream_t stream) {
  using acc_t = typename Acc<T>::type;
  const T* g = static_cast<const T*>(gv);
  const T* x = static_cast<const T*>(xv);
  T* gw = static_cast<T*>(gwv);
  acc_t* ws = static_cast<acc_t*>(wsv);
  const Conv p = forward_conv(s);
  const int64_t kk = s.kh * s.kw, total = p.out_c * kk;
  const int64_t chunks = bww_chunks(s);
  const int k = fixed_k(s), st = fixed_stride(s);
  switch (bww_kind(s)) {
    case BwwKind::kNchw: {
      const int64_t tx = p.out_w <= 32 ? p.out_w : ceil_div(p.out_w, ceil_div(p.out_w, 32));
      const dim3 grid(unsigned(p.out_c), unsigned(chunks));
      const dim3 block(unsigned(tx), unsigned(kThreads / tx));
      const Div64 div_spn(ceil_div(p.out_h, kRowsPerThread));
      dispatch_fixed<true>(k, st, [&](auto K, auto S) {
        constexpr int kK = decltype(K)::value, kS = decltype(S)::value;
        launch(bww_nchw_kernel<T, kK, kK, kS, kRowsPerThread>, grid, block, 0, stream, g, x, ws,
               p, chunks, div_spn);
      });
      break;
    }
    case BwwKind::kNhwc: {
      // 2 channels per thread only up to 5x5, as in the forward (2*49 accumulators).
      const int vc = k <= 5 ? nhwc_vec<T>(p, g, x) : 1;
      const int64_t cgroups = p.out_c / vc, owg_n = ceil_div(p.out_w, kPixPerThread);
      const int64_t tc = std::min<int64_t>(cgroups, 32);
      const dim3 grid(unsigned(ceil_div(cgroups, tc)), unsigned(chunks));
      const dim3 block(unsigned(tc), unsigned(kThreads / tc));
      const Div64 div_owg(owg_n), div_oh(p.out_h);
      dispatch_fixed<true>(k, st, [&](auto K, auto S) {
        constexpr int kK = decltype(K)::value, kS = decltype(S)::value;
        if constexpr (kK <= 5 && kVec2<T>) {
          if (vc == 2) {
            launch(bww_nhwc_kernel<T, kK, kK, kS, 2, kPixPerThread>, grid, block, 0, stream, g,
                   x, ws, p, chunks, cgroups, owg_n, div_owg, div_oh);
            return;
          }
        }
        launch(bww_nhwc_kernel<T, kK, kK, kS, 1, kPixPerThread>, grid, block, 0, stream, g, x,
               ws, p, chunks, cgroups, owg_n, div_owg, div_oh);
      });
      break;
    }
    case BwwKind::kGeneric:
      launch(bww_generic_kernel<T>, dim3(unsigned(p.out_c), unsigned(chunks)), dim3(kThreads), 0,
             stream, g, x, ws, p, bool(s.channels_last), chunks, Div64(p.out_w), Div64(p.out_h));
      break;
  }
  launch(bww_finalize_kernel<T>, dim3(grid_stride_blocks(total, kThreads)), dim3(kThreads), 0,
         stream, static_cast<const acc_t*>(ws), gw, chunks, total);
  return cudaGetLastError();
}

}  // namespace

int64_t depthwise_backward_weight_workspace(const DepthwiseShape& s) {
  if (!valid_shape(s)) return 0;
  // sizeof(double): the query has no dtype, and fp64 keeps double partial sums.
  return bww_chunks(s) * s.c * s.mult * s.kh * s.kw * int64_t(sizeof(double));
}

cudaError_t depthwise_backward_weight(const void* grad, const void* x, void* grad_w,
                                      void* workspace, const DepthwiseShape& s, DType dtype,
                                      cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  const int64_t total = s.c * s.mult * s.kh * s.kw;
  if (s.n * s.oh * s.ow == 0) {  // nothing to reduce: the gradient is zero
    size_t elem = dtype == DType::kFloat64 ? 8 : dtype == DType::kFloat32 ? 4 : 2;
    return cudaMemsetAsync(grad_w, 0, size_t(total) * elem, stream);
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return backward_weight_impl<float>(grad, x, grad_w, workspace, s, stream);
    case DType::kFloat16: return backward_weight_impl<__half>(grad, x, grad_w, workspace, s, stream);
    case DType::kBFloat16:
      return backward_weight_impl<__nv_bfloat16>(grad, x, grad_w, workspace, s, stream);
    case DType::kFloat64: return backward_weight_impl<double>(grad, x, grad_w, workspace, s, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
