// CUDA kernels of the depthwise family: y = act(conv2d(x, w, groups=C) + bias), its input
// gradient and its weight gradient, for contiguous NCHW and NHWC tensors.
//
// STATUS: compile-checked with nvcc (sm_90, no warnings) and run on the CPU under a throwaway
// host emulation of the CUDA execution model (one std::thread per CUDA thread, a barrier for
// __syncthreads; not in the repo) against F.conv2d and its autograd gradients; NOT yet run on a
// GPU. Races the emulation cannot show, speed and occupancy are unverified: run the cuda tests
// and compute-sanitizer (memcheck, racecheck) on a device before trusting it.
//
// The op is memory-bound (a 3x3 output is 9 FMAs against 4-8 bytes moved), so the aim is to
// read each input element from DRAM once, keep the per-output instruction count low enough for
// fp16 to reach copy bandwidth, and never index with int32 what can pass 2^31.
//
// Forward, NCHW: a block stages the input tile + halo of one output tile (or of several small
// planes: 7x7 and 14x14 planes would leave most lanes idle otherwise) in shared memory as
// acc_t; each thread makes U outputs down one column, so one shared-memory read feeds up to
// KH of them (registers, for the fixed 3x3/5x5/7x7 kernels). Lanes run along W: global loads,
// stores and shared reads are unit-stride. The tile width is fitted to OW (56 -> 2 x 28) so
// no lanes idle on the common sizes.
// Forward, NHWC: lanes run over channels (2-wide packs where aligned, up to 5x5), each thread
// makes PW outputs along W and reuses every loaded pixel for all of them; weights in registers.
// Backward input: for stride 1 and m == 1 it is a forward conv of grad with the mirrored kernel
// and padding (k-1)*d - p, so it reuses the forward kernels. Other strides and multipliers use
// a gather (one thread per input element, only the taps that land, the m outputs summed).
// Backward weight: deterministic, no atomics. Blocks reduce a chunk of N*OH*OW into partial
// sums ws[S][C*m][KH*KW] (acc_t) with a fixed-order tree; a second kernel sums over S.
//
// Fixed-size templates: KH = KW in {3, 5, 7}, stride 1 or 2 in both dims, dilation 1. Everything
// else (1xk, kx1, dilation, other strides) takes the runtime-size path of the same kernels.
// Shapes whose in-plane coordinates could overflow int32 take int64 fallback kernels.
#include <algorithm>
#include <cstdint>

#include "cuda_math.cuh"
#include "launchers.h"

namespace fastblocks::cuda {
namespace {

constexpr int kThreads = 256;
// Dynamic shared memory of the tiled kernel; the static arrays take another 4 KiB, and the
// total stays under the 48 KiB that needs no opt-in attribute.
constexpr int64_t kTileSmemBytes = 44 * 1024;
// Rows per thread of the NCHW kernels; pixels per thread along W of the NHWC kernels.
constexpr int kRowsPerThread = 4;
constexpr int kPixPerThread = 4;
// Blocks that keep all SMs of an H100 (132) busy a few times over; sizes the S chunks of the
// weight gradient. A shape-only constant: the workspace size must not depend on the device.
constexpr int64_t kTargetBlocks = 132 * 4;
constexpr int64_t kInt32Max = 2147483647;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Division by a runtime divisor d in [1, 2^31) for dividends in [0, 2^31): a multiply-high and
// a shift instead of the ~20-instruction integer division (Granlund-Montgomery, as ATen's
// IntDivider).
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    for (s = 0; s < 32; ++s)
      if ((uint64_t(1) << s) >= d) break;
    m = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> s; }
};

// int64 division that takes the FastDiv path whenever both operands fit it (a uniform branch in
// practice: every thread of a kernel sees the same divisor and similar dividends).
struct Div64 {
  int64_t d = 1;
  FastDiv f;
  Div64() = default;
  explicit Div64(int64_t divisor)
      : d(divisor), f(divisor >= 1 && divisor <= kInt32Max ? uint32_t(divisor) : 1u) {}
  __device__ __forceinline__ int64_t div(int64_t n) const {
    if (d <= kInt32Max && n >= 0 && n <= kInt32Max) return f.div(uint32_t(n));
    return n / d;
  }
};

// A depthwise conv as the kernels see it: `in` is read, `out` is written, and
// in_row = out_row * sh - ph + i * dh (same for columns). Output channel c reads input channel
// c / mult with the weights of channel c. The flipped mode of the kernels (stride-1 input
// gradient, mult == 1: in = grad, out = grad_x) only mirrors the taps.
struct Conv {
  int64_t n, in_c, in_h, in_w, out_c, out_h, out_w;
  int kh, kw, sh, sw, ph, pw, dh, dw, mult;
};

Conv forward_conv(const DepthwiseShape& s) {
  return Conv{s.n,         s.c,         s.h,         s.w,         s.c * s.mult,
              s.oh,        s.ow,        int(s.kh),   int(s.kw),   int(s.stride_h),
              int(s.stride_w), int(s.pad_h), int(s.pad_w), int(s.dil_h), int(s.dil_w),
              int(s.mult)};
}

// grad_x[iy] = sum_i grad[(iy + ph - i*dh) / sh] * w[i]; for sh == 1, substituting
// i = kh-1-i' gives sum_i' grad[iy - ((kh-1)*dh - ph) + i'*dh] * w[kh-1-i']: a forward conv of
// grad (stride 1, same dilation) with padding (kh-1)*dh - ph and the kernel mirrored.
// Only for mult == 1 (with m > 1 each grad_x channel would sum m flipped convs: gather instead).
Conv flipped_conv(const DepthwiseShape& s) {
  return Conv{s.n,
              s.c,
              s.oh,
              s.ow,
              s.c,
              s.h,
              s.w,
              int(s.kh),
              int(s.kw),
              1,
              1,
              int((s.kh - 1) * s.dil_h - s.pad_h),
              int((s.kw - 1) * s.dil_w - s.pad_w),
              int(s.dil_h),
              int(s.dil_w),
              1};
}

// Whether every in-plane coordinate the fast kernels form (out*stride - pad + tap*dil, tile
// origins, their flipped-mode counterparts) stays well inside int32; each term below is at most
// 2^27 and no expression adds more than eight of them. Anything else takes the int64 kernels.
bool small_coords(const DepthwiseShape& s) {
  constexpr int64_t lim = int64_t(1) << 27;
  auto ok = [&](int64_t v) { return v >= -lim && v <= lim; };
  return ok(s.h) && ok(s.w) && ok(s.oh) && ok(s.ow) && ok(s.pad_h) && ok(s.pad_w) &&
         ok(s.kh * s.dil_h) && ok(s.kw * s.dil_w) && ok((s.oh + 64) * s.stride_h) &&
         ok((s.ow + 64) * s.stride_w) && ok(s.mult) && s.c * s.mult <= kInt32Max;
}

// Kernel size of the fixed-size templates (3, 5, 7) or 0 for the runtime-size path.
int fixed_k(const DepthwiseShape& s) {
  if (s.kh != s.kw || s.dil_h != 1 || s.dil_w != 1) return 0;
  return (s.kh == 3 || s.kh == 5 || s.kh == 7) ? int(s.kh) : 0;
}
int fixed_stride(const DepthwiseShape& s) {
  return (s.stride_h == s.stride_w && (s.stride_h == 1 || s.stride_h == 2)) ? int(s.stride_h) : 0;
}

template <int V> struct IntC { static constexpr int value = V; };

// Calls f(IntC<K>, IntC<S>) for the instantiated fixed sizes; false when (k, st) has none.
template <bool kStride2, typename F> bool dispatch_fixed(int k, int st, F&& f) {
  if (st == 1) {
    if (k == 3) return f(IntC<3>{}, IntC<1>{}), true;
    if (k == 5) return f(IntC<5>{}, IntC<1>{}), true;
    if (k == 7) return f(IntC<7>{}, IntC<1>{}), true;
    return false;
  }
  if constexpr (kStride2) {
    if (st == 2) {
      if (k == 3) return f(IntC<3>{}, IntC<2>{}), true;
      if (k == 5) return f(IntC<5>{}, IntC<2>{}), true;
      if (k == 7) return f(IntC<7>{}, IntC<2>{}), true;
    }
  }
  return false;
}

template <bool kStride2> bool has_fixed(int k, int st) {
  return (k == 3 || k == 5 || k == 7) && (st == 1 || (kStride2 && st == 2));
}

// The one launch site: every kernel goes through here, on the caller's stream.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            Args... args) {
  FB_LAUNCH(grid, block, smem, stream, kernel)(args...);
}

bool aligned(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

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
bool plan_tiles(const Conv& p, int U, int64_t acc_bytes, TileCfg& tc) {
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

// --------------------------------------------------------------------------------------------
// int64 fallbacks: one thread per output element, any size, either layout.

// Output element idx of a contiguous (N, C, H, W) or (N, H, W, C) tensor.
struct Index4 {
  int64_t n, c, y, x;
};
struct Decompose {
  Div64 dc, dh, dw;
  int64_t c, h, w;
  bool cl;
  __device__ __forceinline__ Index4 operator()(int64_t idx) const {
    Index4 r;
    if (cl) {
      const int64_t a = dc.div(idx), b = dw.div(a);
      r.c = idx - a * c;
      r.x = a - b * w;
      r.n = dh.div(b);
      r.y = b - r.n * h;
    } else {
      const int64_t a = dw.div(idx), b = dh.div(a);
      r.x = idx - a * w;
      r.y = a - b * h;
      r.n = dc.div(b);
      r.c = b - r.n * c;
    }
    return r;
  }
};
Decompose make_decompose(int64_t c, int64_t h, int64_t w, bool cl) {
  return Decompose{Div64(c), Div64(h), Div64(w), c, h, w, cl};
}
__device__ __forceinline__ int64_t offset4(int64_t n, int64_t c, int64_t y, int64_t x, int64_t C,
                                           int64_t H, int64_t W, bool cl) {
  return cl ? ((n * H + y) * W + x) * C + c : ((n * C + c) * H + y) * W + x;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    direct_forward_kernel(const T* __restrict__ in, const T* __restrict__ w,
                          const T* __restrict__ bias, T* __restrict__ out, const Conv p,
                          const Decompose dec, const int act) {
  using acc_t = typename Acc<T>::type;
  const int64_t total = p.n * p.out_c * p.out_h * p.out_w;
  const int64_t kk = int64_t(p.kh) * p.kw;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Index4 o = dec(idx);
    const int64_t ic = o.c / p.mult;
    acc_t acc = bias != nullptr ? to_acc(bias[o.c]) : acc_t(0);
    for (int i = 0; i < p.kh; ++i) {
      const int64_t iy = o.y * p.sh - p.ph + int64_t(i) * p.dh;
      if (iy < 0 || iy >= p.in_h) continue;
      for (int j = 0; j < p.kw; ++j) {
        const int64_t ix = o.x * p.sw - p.pw + int64_t(j) * p.dw;
        if (ix < 0 || ix >= p.in_w) continue;
        acc += to_acc(in[offset4(o.n, ic, iy, ix, p.in_c, p.in_h, p.in_w, dec.cl)]) *
               to_acc(w[o.c * kk + i * p.kw + j]);
      }
    }
    out[idx] = from_acc<T>(act_forward<acc_t>(acc, act));
  }
}

// Input gradient by gather, for strides > 1 (and as the int64 fallback): grad_x element
// (n, c, iy, ix) sums grad[n, c*mult+k, oy, ox] * w[c*mult+k, i, j] over the taps with
// iy + ph - i*dh = oy*sh (0 <= oy < OH), likewise for columns. S = 2: stride 2 in both dims,
// parity tests instead of divisions; S = 0: runtime strides. `p` is the forward Conv.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads)
    gather_backward_input_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                                 T* __restrict__ gx, const Conv p, const Decompose dec) {
  using acc_t = typename Acc<T>::type;
  const int64_t total = p.n * p.in_c * p.in_h * p.in_w;
  const int64_t kk = int64_t(p.kh) * p.kw;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Index4 o = dec(idx);  // over grad_x: (n, c, iy, ix)
    acc_t acc = acc_t(0);
    for (int i = 0; i < p.kh; ++i) {
      const int64_t ty = o.y + p.ph - int64_t(i) * p.dh;  // decreases with i
      if (ty < 0) break;
      int64_t oy;
      if constexpr (S == 2) {
        if (ty & 1) continue;
        oy = ty >> 1;
      } else {
        oy = ty / p.sh;
        if (oy * p.sh != ty) continue;
      }
      if (oy >= p.out_h) continue;
      for (int j = 0; j < p.kw; ++j) {
        const int64_t tx = o.x + p.pw - int64_t(j) * p.dw;
        if (tx < 0) break;
        int64_t ox;
        if constexpr (S == 2) {
          if (tx & 1) continue;
          ox = tx >> 1;
        } else {
          ox = tx / p.sw;
          if (ox * p.sw != tx) continue;
        }
        if (ox >= p.out_w) continue;
        for (int k = 0; k < p.mult; ++k) {
          const int64_t oc = o.c * p.mult + k;
          acc += to_acc(grad[offset4(o.n, oc, oy, ox, p.out_c, p.out_h, p.out_w, dec.cl)]) *
                 to_acc(w[oc * kk + i * p.kw + j]);
        }
      }
    }
    gx[idx] = from_acc<T>(acc);
  }
}

// --------------------------------------------------------------------------------------------
// Weight gradient: partial sums ws[chunk][oc][tap], then a sum over the chunks.

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

// --------------------------------------------------------------------------------------------
// Host side

unsigned grid_1d(int64_t work) {
  // Grid-stride kernels: enough blocks to cover the work, capped at 8 resident blocks of 256
  // threads on each of 132 SMs.
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, kThreads), 132 * 8)));
}

// NHWC launch geometry: (tc channel groups) x (tp pixel groups) x (tr rows) threads.
struct NhwcLaunch {
  NhwcCfg cfg;
  dim3 grid, block;
};
bool plan_nhwc(const Conv& p, int vc, int pw, NhwcLaunch& l) {
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

// Pack width for NHWC: 2 channels per load when mult == 1, channels even and pointers aligned.
// fp64 stays scalar (a 16-byte pack would only add registers).
template <typename T> constexpr bool kVec2 = sizeof(T) < 8;
template <typename T>
int nhwc_vec(const Conv& p, const void* a, const void* b) {
  if (!kVec2<T> || p.mult != 1 || p.in_c % 2 != 0 || p.out_c % 2 != 0) return 1;
  return aligned(a, 2 * sizeof(T)) && aligned(b, 2 * sizeof(T)) ? 2 : 1;
}

template <typename T>
void launch_direct_forward(const T* x, const T* w, const T* b, T* y, const Conv& p, bool cl,
                           int act, cudaStream_t stream) {
  const int64_t total = p.n * p.out_c * p.out_h * p.out_w;
  launch(direct_forward_kernel<T>, dim3(grid_1d(total)), dim3(kThreads), 0, stream, x, w, b, y,
         p, make_decompose(p.out_c, p.out_h, p.out_w, cl), act);
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

template <typename T>
cudaError_t forward_impl(const void* xv, const void* wv, const void* bv, void* yv,
                         const DepthwiseShape& s, int act, cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  const T* w = static_cast<const T*>(wv);
  const T* b = static_cast<const T*>(bv);
  T* y = static_cast<T*>(yv);
  const Conv p = forward_conv(s);
  if (!small_coords(s) ||
      !launch_conv<T, false>(x, w, b, y, p, fixed_k(s), fixed_stride(s), s.channels_last, act,
                             stream))
    launch_direct_forward(x, w, b, y, p, s.channels_last, act, stream);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_input_impl(const void* gv, const void* wv, void* gxv,
                                const DepthwiseShape& s, cudaStream_t stream) {
  const T* g = static_cast<const T*>(gv);
  const T* w = static_cast<const T*>(wv);
  T* gx = static_cast<T*>(gxv);
  if (s.stride_h == 1 && s.stride_w == 1 && s.mult == 1 && small_coords(s) &&
      launch_conv<T, true>(g, w, nullptr, gx, flipped_conv(s), fixed_k(s), 1, s.channels_last,
                           0, stream))
    return cudaGetLastError();
  const Conv p = forward_conv(s);
  const Decompose dec = make_decompose(s.c, s.h, s.w, s.channels_last);
  const dim3 grid(grid_1d(s.n * s.c * s.h * s.w));
  if (s.stride_h == 2 && s.stride_w == 2)
    launch(gather_backward_input_kernel<T, 2>, grid, dim3(kThreads), 0, stream, g, w, gx, p, dec);
  else
    launch(gather_backward_input_kernel<T, 0>, grid, dim3(kThreads), 0, stream, g, w, gx, p, dec);
  return cudaGetLastError();
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
  launch(bww_finalize_kernel<T>, dim3(grid_1d(total)), dim3(kThreads), 0, stream,
         static_cast<const acc_t*>(ws), gw, chunks, total);
  return cudaGetLastError();
}

bool valid_shape(const DepthwiseShape& s) {
  return s.n >= 0 && s.c >= 1 && s.h >= 0 && s.w >= 0 && s.mult >= 1 && s.oh >= 0 && s.ow >= 0 &&
         s.kh >= 1 && s.kw >= 1 && s.stride_h >= 1 && s.stride_w >= 1 && s.dil_h >= 1 &&
         s.dil_w >= 1 && s.c * s.mult <= kInt32Max && s.kh * s.kw <= kInt32Max &&
         s.kh <= kInt32Max / s.dil_h && s.kw <= kInt32Max / s.dil_w &&
         s.stride_h <= kInt32Max && s.stride_w <= kInt32Max && s.pad_h >= -kInt32Max &&
         s.pad_h <= kInt32Max && s.pad_w >= -kInt32Max && s.pad_w <= kInt32Max;
}

}  // namespace

cudaError_t depthwise_forward(const void* x, const void* weight, const void* bias, void* y,
                              const DepthwiseShape& s, int act, DType dtype, cudaStream_t stream) {
  if (!valid_shape(s) || act < 0 || act >= kNumActs) return cudaErrorInvalidValue;
  if (s.n * s.c * s.mult * s.oh * s.ow == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return forward_impl<float>(x, weight, bias, y, s, act, stream);
    case DType::kFloat16: return forward_impl<__half>(x, weight, bias, y, s, act, stream);
    case DType::kBFloat16: return forward_impl<__nv_bfloat16>(x, weight, bias, y, s, act, stream);
    case DType::kFloat64: return forward_impl<double>(x, weight, bias, y, s, act, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t depthwise_backward_input(const void* grad, const void* weight, void* grad_x,
                                     const DepthwiseShape& s, DType dtype, cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  if (s.n * s.c * s.h * s.w == 0) return cudaSuccess;  // grad empty, grad_x not: zeros
  switch (dtype) {
    case DType::kFloat32: return backward_input_impl<float>(grad, weight, grad_x, s, stream);
    case DType::kFloat16: return backward_input_impl<__half>(grad, weight, grad_x, s, stream);
    case DType::kBFloat16:
      return backward_input_impl<__nv_bfloat16>(grad, weight, grad_x, s, stream);
    case DType::kFloat64: return backward_input_impl<double>(grad, weight, grad_x, s, stream);
  }
  return cudaErrorInvalidValue;
}

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
