// The forward-convolution kernels of the depthwise family and their launch planning:
// launch_conv<T, kFlip> runs a Conv (depthwise_common.cuh) with the tiled NCHW kernel or the
// NHWC kernel, or returns false when neither fits. A header rather than a .cu because two
// launchers use it: the forward (kFlip false, depthwise_forward.cu) and the stride-1 input
// gradient, a forward conv of grad with the mirrored kernel (kFlip true,
// depthwise_backward_input.cu); each instantiates only its own mode.
//
// NCHW: a block stages the input tile + halo of one output tile (or of several small planes:
// 7x7 and 14x14 planes would leave most lanes idle otherwise) in shared memory as acc_t; each
// thread makes U outputs down one column, so one shared-memory read feeds up to KH of them
// (registers, for the fixed 3x3/5x5/7x7 kernels). Lanes run along W: global loads, stores and
// shared reads are unit-stride. The tile width is fitted to OW (56 -> 2 x 28) so no lanes idle
// on the common sizes.
// NHWC: lanes run over channels (2-wide packs where aligned, up to 5x5), each thread makes PW
// outputs along W and reuses every loaded pixel for all of them; weights in registers.
#pragma once
#include <algorithm>
#include <cstdint>

#include "depthwise_common.cuh"

namespace fastblocks::cuda {
namespace {

// Dynamic shared memory of the tiled kernel; the static arrays take another 4 KiB, and the
// total stays under the 48 KiB that needs no opt-in attribute.
constexpr int64_t kTileSmemBytes = 44 * 1024;

// --------------------------------------------------------------------------------------------
// NCHW tiled kernel (forward; flipped mode for the stride-1 input gradient)

struct TileCfg {
  int tx, ty, planes;  // block (tx, ty, planes): tile tx columns x ty*U rows, per plane
  int ith, itw;        // staged input rows/cols per plane
  int64_t tiles_w, tiles_h, ntiles;
  FastDiv div_itw, div_ith;
};

// Picks the tile for `p` or returns false when even a one-row tile of one plane would not fit
// in kTileSmemBytes (huge kernels or strides: the direct kernel serves those).
inline bool plan_tiles(const Conv& p, int U, int64_t acc_bytes, TileCfg& tc) {
  const int64_t nplanes = p.n * p.out_c;
  // Tile width fitted to OW: one tile up to 32, else equal tiles of <= 32 (56 -> 28 + 28).
  const int64_t tx = p.out_w <= 32 ? p.out_w : ceil_div(p.out_w, ceil_div(p.out_w, 32));
  int64_t ty = std::min<int64_t>(ceil_div(p.out_h, U), 8);
  for (;;) {
    const int64_t tiles_h = ceil_div(p.out_h, ty * U);
    // Same tile count with the fewest idle rows (OH 56, U 4: 2 tiles of 28, not 32 + 24).
    const int64_t tyb = ceil_div(ceil_div(p.out_h, tiles_h), U);
    const int64_t ith = (tyb * U - 1) * p.sh + int64_t(p.kh - 1) * p.dh + 1;
    const int64_t itw = (tx - 1) * p.sw + int64_t(p.kw - 1) * p.dw + 1;
    const int64_t plane_bytes = ith * itw * acc_bytes;
    // blockDim.z (the planes) is capped at 64 by CUDA.
    int64_t planes =
        std::min<int64_t>({std::max<int64_t>(1, kThreads / (tx * tyb)), nplanes, 64});
    planes = std::min<int64_t>(planes, kTileSmemBytes / plane_bytes);
    if (planes >= 1) {
      tc.tx = int(tx);
      tc.ty = int(tyb);
      tc.planes = int(planes);
      tc.ith = int(ith);
      tc.itw = int(itw);
      tc.tiles_w = ceil_div(p.out_w, tx);
      tc.tiles_h = tiles_h;
      tc.ntiles = tc.tiles_w * tiles_h * ceil_div(nplanes, planes);
      tc.div_itw = FastDiv(uint32_t(itw));
      tc.div_ith = FastDiv(uint32_t(ith));
      return true;
    }
    if (ty == 1) return false;
    ty = (ty + 1) / 2;
  }
}

// KH > 0: fixed KH x KW kernel, stride S in both dims, dilation 1; KH == 0: runtime sizes.
// Thread (tx, ty, tz) makes rows oy0 + ty*U + u (u < U) of column ox0 + tx of plane tz.
template <typename T, int KH, int KW, int S, int U, bool kFlip>
__global__ void __launch_bounds__(kThreads)
    nchw_tiled_kernel(const T* __restrict__ in, const T* __restrict__ w,
                      const T* __restrict__ bias, T* __restrict__ out, const Conv p,
                      const TileCfg tc, const int act) {
  using acc_t = typename Acc<T>::type;
  constexpr bool kFixed = KH > 0;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* tile = reinterpret_cast<acc_t*>(smem_raw);  // [planes][ith][itw]
  __shared__ int64_t s_in_base[kThreads];  // offset of the input plane of plane z
  __shared__ int64_t s_wch[kThreads];      // its weight channel, -1 past the last plane

  const int sh = kFixed ? S : p.sh, sw = kFixed ? S : p.sw;
  const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
  const int nthreads = tc.tx * tc.ty * tc.planes;
  const int tid = (tz * tc.ty + ty) * tc.tx + tx;
  const int tile_rows = tc.ty * U;
  const int tile_elems = tc.planes * tc.ith * tc.itw;
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  const int64_t nplanes = p.n * p.out_c;
  const int64_t kk = int64_t(p.kh) * p.kw;

  for (int64_t t = blockIdx.x; t < tc.ntiles; t += gridDim.x) {
    const int64_t t2 = t / tc.tiles_w, group = t2 / tc.tiles_h;
    const int ox0 = int(t - t2 * tc.tiles_w) * tc.tx;
    const int oy0 = int(t2 - group * tc.tiles_h) * tile_rows;
    const int iy0 = oy0 * sh - p.ph, ix0 = ox0 * sw - p.pw;
    __syncthreads();  // the previous tile's readers of tile/s_* are done
    if (tid < tc.planes) {
      const int64_t plane = group * tc.planes + tid;
      int64_t wch = -1, base = 0;
      if (plane < nplanes) {
        const int64_t nn = plane / p.out_c, c = plane - nn * p.out_c;
        wch = c;
        base = (nn * p.in_c + c / p.mult) * in_plane;
      }
      s_wch[tid] = wch;
      s_in_base[tid] = base;
    }
    __syncthreads();
    // Stage: element e = (z * ith + r) * itw + col, zero outside the input (the padding).
    for (int e = tid; e < tile_elems; e += nthreads) {
      const int zr = int(tc.div_itw.div(uint32_t(e)));
      const int col = e - zr * tc.itw;
      const int z = tc.planes == 1 ? 0 : int(tc.div_ith.div(uint32_t(zr)));
      const int iy = iy0 + (zr - z * tc.ith), ix = ix0 + col;
      acc_t v = acc_t(0);
      if (s_wch[z] >= 0 && iy >= 0 && iy < p.in_h && ix >= 0 && ix < p.in_w)
        v = to_acc(in[s_in_base[z] + int64_t(iy) * p.in_w + ix]);
      tile[e] = v;
    }
    __syncthreads();
    const int64_t wch = s_wch[tz];
    const int ox = ox0 + tx;
    if (wch < 0 || ox >= p.out_w) continue;  // the next barrier is at the loop top: all reach it
    const T* wp = w + wch * kk;
    acc_t acc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) acc[u] = acc_t(0);
    if constexpr (kFixed) {
      acc_t wr[KH * KW];
#pragma unroll
      for (int i = 0; i < KH; ++i)
#pragma unroll
        for (int j = 0; j < KW; ++j)
          wr[i * KW + j] = to_acc(wp[kFlip ? (KH - 1 - i) * KW + (KW - 1 - j) : i * KW + j]);
      // Output u uses tile rows ty*U*S + u*S + i; walking the union of those rows once lets
      // one shared read feed every output that needs it. Rows stay < ith and columns < itw:
      // (ty*U + U-1)*S + KH-1 <= (tile_rows-1)*S + KH-1 = ith-1, tx*S + KW-1 <= itw-1.
      const acc_t* sp = tile + (tz * tc.ith + ty * U * S) * tc.itw + tx * S;
#pragma unroll
      for (int r = 0; r < (U - 1) * S + KH; ++r) {
#pragma unroll
        for (int j = 0; j < KW; ++j) {
          const acc_t v = sp[r * tc.itw + j];
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int i = r - u * S;
            if (i >= 0 && i < KH) acc[u] += v * wr[i * KW + j];
          }
        }
      }
    } else {
      const acc_t* sp = tile + (tz * tc.ith + ty * U * sh) * tc.itw + tx * sw;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        for (int i = 0; i < p.kh; ++i) {
          const acc_t* rp = sp + (u * sh + i * p.dh) * tc.itw;
          for (int j = 0; j < p.kw; ++j) {
            const int wi = kFlip ? (p.kh - 1 - i) * p.kw + (p.kw - 1 - j) : i * p.kw + j;
            acc[u] += rp[j * p.dw] * to_acc(wp[wi]);
          }
        }
      }
    }
    const acc_t b = bias != nullptr ? to_acc(bias[wch]) : acc_t(0);
    T* op = out + (group * tc.planes + tz) * out_plane + ox;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int oy = oy0 + ty * U + u;
      if (oy < p.out_h) op[int64_t(oy) * p.out_w] = from_acc<T>(act_forward<acc_t>(acc[u] + b, act));
    }
  }
}

// --------------------------------------------------------------------------------------------
// NHWC kernel (forward; flipped mode for the stride-1 input gradient). No shared memory and no
// barriers: neighbouring pixels of a row are read by neighbouring threads of the block, so the
// KH*KW-fold reuse is served by L1.

struct NhwcCfg {
  int64_t cgroups;  // channel groups of VC channels
  int64_t owg;      // pixel groups of PW pixels per output row
  int64_t rows;     // N * out_h
  int64_t cblocks;  // blocks along the channel groups
};

// Thread: channels c0..c0+VC-1, pixels ox0..ox0+PW-1 of rows row, row + stride, ...
// VC > 1 requires mult == 1 and in_c, out_c multiples of VC, pointers aligned to a pack.
template <typename T, int KH, int KW, int S, int VC, int PW, bool kFlip>
__global__ void __launch_bounds__(kThreads)
    nhwc_kernel(const T* __restrict__ in, const T* __restrict__ w, const T* __restrict__ bias,
                T* __restrict__ out, const Conv p, const NhwcCfg nc, const Div64 div_oh,
                const int act) {
  using acc_t = typename Acc<T>::type;
  using P = Pack<T, VC>;
  constexpr bool kFixed = KH > 0;
  static_assert(kFixed || PW == 1, "the runtime-size path makes one pixel per thread");
  constexpr int kKK = kFixed ? KH * KW : 1;
  const int64_t cb = int64_t(blockIdx.x) % nc.cblocks, pb = int64_t(blockIdx.x) / nc.cblocks;
  const int64_t cg = cb * blockDim.x + threadIdx.x;
  const int64_t owg = pb * blockDim.y + threadIdx.y;
  if (cg >= nc.cgroups || owg >= nc.owg) return;  // this kernel has no barriers
  const int64_t c0 = cg * VC;
  const int ox0 = int(owg) * PW;
  const int64_t kk = int64_t(p.kh) * p.kw;
  // Lane q reads input channel ic0 + q with the weights of channel c0 + q (VC > 1: mult == 1).
  const int64_t ic0 = c0 / p.mult;
  acc_t wr[VC][kKK];
  if constexpr (kFixed) {
#pragma unroll
    for (int q = 0; q < VC; ++q)
#pragma unroll
      for (int i = 0; i < KH; ++i)
#pragma unroll
        for (int j = 0; j < KW; ++j)
          wr[q][i * KW + j] =
              to_acc(w[(c0 + q) * kk + (kFlip ? (KH - 1 - i) * KW + (KW - 1 - j) : i * KW + j)]);
  }

  for (int64_t row = int64_t(blockIdx.y) * blockDim.z + threadIdx.z; row < nc.rows;
       row += int64_t(gridDim.y) * blockDim.z) {
    const int64_t nn = div_oh.div(row);
    const int oy = int(row - nn * p.out_h);
    acc_t acc[PW][VC];
#pragma unroll
    for (int pp = 0; pp < PW; ++pp)
#pragma unroll
      for (int q = 0; q < VC; ++q) acc[pp][q] = acc_t(0);
    const T* base = in + nn * p.in_h * p.in_w * p.in_c + ic0;
    if constexpr (kFixed) {
      const int iyb = oy * S - p.ph, ixb = ox0 * S - p.pw;
#pragma unroll
      for (int i = 0; i < KH; ++i) {
        const int iy = iyb + i;
        if (iy < 0 || iy >= p.in_h) continue;
        const T* rowp = base + int64_t(iy) * p.in_w * p.in_c;
        // Input column cx feeds output pp through tap j = cx - pp*S.
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
              for (int q = 0; q < VC; ++q) acc[pp][q] += to_acc(v.v[q]) * wr[q][i * KW + j];
            }
          }
        }
      }
    } else {
      for (int i = 0; i < p.kh; ++i) {
        const int iy = oy * p.sh - p.ph + i * p.dh;
        if (iy < 0 || iy >= p.in_h) continue;
        const T* rowp = base + int64_t(iy) * p.in_w * p.in_c;
        for (int j = 0; j < p.kw; ++j) {
          const int ix = ox0 * p.sw - p.pw + j * p.dw;
          if (ix < 0 || ix >= p.in_w) continue;
          const P v = *reinterpret_cast<const P*>(rowp + int64_t(ix) * p.in_c);
          const int wi = kFlip ? (p.kh - 1 - i) * p.kw + (p.kw - 1 - j) : i * p.kw + j;
#pragma unroll
          for (int q = 0; q < VC; ++q) acc[0][q] += to_acc(v.v[q]) * to_acc(w[(c0 + q) * kk + wi]);
        }
      }
    }
    T* orow = out + row * p.out_w * p.out_c + c0;
#pragma unroll
    for (int pp = 0; pp < PW; ++pp) {
      const int ox = ox0 + pp;
      if (ox >= p.out_w) break;
      P o;
#pragma unroll
      for (int q = 0; q < VC; ++q) {
        const acc_t b = bias != nullptr ? to_acc(bias[c0 + q]) : acc_t(0);
        o.v[q] = from_acc<T>(act_forward<acc_t>(acc[pp][q] + b, act));
      }
      *reinterpret_cast<P*>(orow + int64_t(ox) * p.out_c) = o;
    }
  }
  (void)wr;
}

// NHWC launch geometry: (tc channel groups) x (tp pixel groups) x (tr rows) threads.
struct NhwcLaunch {
  NhwcCfg cfg;
  dim3 grid, block;
};
inline bool plan_nhwc(const Conv& p, int vc, int pw, NhwcLaunch& l) {
  l.cfg.cgroups = p.out_c / vc;
  l.cfg.owg = ceil_div(p.out_w, pw);
  l.cfg.rows = p.n * p.out_h;
  const int64_t tc = std::min<int64_t>(l.cfg.cgroups, 32);
  const int64_t tp = std::min<int64_t>(l.cfg.owg, kThreads / tc);
  const int64_t tr = std::min<int64_t>({std::max<int64_t>(1, kThreads / (tc * tp)), 64, l.cfg.rows});
  l.cfg.cblocks = ceil_div(l.cfg.cgroups, tc);
  const int64_t gx = l.cfg.cblocks * ceil_div(l.cfg.owg, tp);
  if (gx > kInt32Max) return false;
  l.grid = dim3(unsigned(gx), unsigned(std::min<int64_t>(ceil_div(l.cfg.rows, tr), 65535)), 1);
  l.block = dim3(unsigned(tc), unsigned(tp), unsigned(tr));
  return true;
}

// Forward conv `p` (or its flipped form) with the tiled NCHW or the NHWC kernel; false when
// neither fits (the caller falls back to an int64 kernel).
template <typename T, bool kFlip>
bool launch_conv(const T* in, const T* w, const T* b, T* out, const Conv& p, int k, int st,
                 bool cl, int act, cudaStream_t stream) {
  using acc_t = typename Acc<T>::type;
  if (cl) {
    const bool fixed = has_fixed<!kFlip>(k, st);
    // 2 channels per thread except for 7x7: 2*49 weights + 8 sums pass 160 registers (ptxas)
    // and would leave one block per SM.
    const int vc = fixed && k == 7 ? 1 : nhwc_vec<T>(p, in, out);
    NhwcLaunch l;
    if (!plan_nhwc(p, vc, fixed ? kPixPerThread : 1, l)) return false;
    const Div64 div_oh(p.out_h);
    auto run = [&](auto K, auto S) {
      constexpr int kK = decltype(K)::value, kS = decltype(S)::value;
      if constexpr (kVec2<T> && kK <= 5) {
        if (vc == 2)
          return launch(nhwc_kernel<T, kK, kK, kS, 2, kPixPerThread, kFlip>, l.grid, l.block, 0,
                        stream, in, w, b, out, p, l.cfg, div_oh, act);
      }
      launch(nhwc_kernel<T, kK, kK, kS, 1, kPixPerThread, kFlip>, l.grid, l.block, 0, stream, in,
             w, b, out, p, l.cfg, div_oh, act);
    };
    if (!fixed || !dispatch_fixed<!kFlip>(k, st, run)) {
      bool done = false;
      if constexpr (kVec2<T>) {
        if (vc == 2) {
          launch(nhwc_kernel<T, 0, 0, 0, 2, 1, kFlip>, l.grid, l.block, 0, stream, in, w, b, out,
                 p, l.cfg, div_oh, act);
          done = true;
        }
      }
      if (!done)
        launch(nhwc_kernel<T, 0, 0, 0, 1, 1, kFlip>, l.grid, l.block, 0, stream, in, w, b, out,
               p, l.cfg, div_oh, act);
    }
    return true;
  }
  TileCfg tc;
  if (!plan_tiles(p, kRowsPerThread, sizeof(acc_t), tc)) return false;
  const dim3 grid(unsigned(std::min<int64_t>(tc.ntiles, kInt32Max)));
  const dim3 block(unsigned(tc.tx), unsigned(tc.ty), unsigned(tc.planes));
  const size_t smem = size_t(tc.planes) * tc.ith * tc.itw * sizeof(acc_t);
  auto run = [&](auto K, auto S) {
    constexpr int kK = decltype(K)::value, kS = decltype(S)::value;
    launch(nchw_tiled_kernel<T, kK, kK, kS, kRowsPerThread, kFlip>, grid, block, smem, stream,
           in, w, b, out, p, tc, act);
  };
  if (k == 0 || st == 0 || !dispatch_fixed<!kFlip>(k, st, run))
    launch(nchw_tiled_kernel<T, 0, 0, 0, kRowsPerThread, kFlip>, grid, block, smem, stream, in,
           w, b, out, p, tc, act);
  return true;
}

}  // namespace
}  // namespace fastblocks::cuda
