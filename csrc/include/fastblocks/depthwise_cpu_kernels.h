// The interface between the depthwise CPU drivers (csrc/cpu/depthwise_{forward,backward_input,
// backward_weight}.cpp) and the vector kernels compiled once per instruction set
// (csrc/cpu/depthwise_isa_{avx512,avx2,sse2}.cpp): the argument structs the kernels take, and
// Kernels<T>, the table of function pointers that kernels<T>() fills for the CPU at hand
// (csrc/cpu/depthwise_isa.cpp). The drivers hold plain pointers and sizes and call through the
// table, so they are compiled once, for baseline x86-64, and never see a vector type.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {

// ---- NCHW phase-split kernels (depthwise_cpu_nchw_kernels.h) ------------------------------------

// Phase-split zero-padded copy of plane x (H, W): P[((b*sw + p)*A + a)*PW + j] =
// x[a*sh + b - ph][j*sw + p - pw]. The zero border is the same for every plane, so the scratch
// is zeroed once and each plane only copies its rows: P[dst + j] = x[src + j*sw], j < n.
struct RowCopy {
  int64_t src, dst, n;
};

// ---- channels_last row kernels (depthwise_cpu_row_kernels.h) ----------------------------------

// Source pixels of a ring row: no border to test (NhwcRow::src_pixels).
constexpr int64_t kNoBorder = std::numeric_limits<int64_t>::max();

// Whether a row of ncol column taps on consecutive source pixels takes sliding register blocks
// (nhwc_row_slide) at this output step; other rows take the generic blocks, which read only
// ring rows.
constexpr bool slides(int64_t step, int64_t ncol) {
  return step == 1 ? (ncol >= 2 && ncol <= 5) || ncol == 7 : step == 2 && (ncol == 3 || ncol == 5 || ncol == 7);
}

// Software prefetch of source rows that a later output row will copy into its ring, spread
// over the register blocks of the current row, a few cache lines per block. Issued as one burst
// per row (the copy's own prefetch of the next row), the lines queued behind the miss buffers:
// at batch 32, 14x14 and 7x7 channels_last forwards spent as long copying rows from memory as
// computing (perf, 32x672x14x14 5x5). rows: the rows' first pixel at the chunk's first channel.
struct RowPrefetch {
  const char* rows[8];
  int nrows = 0;
  int64_t pix_stride = 0, pix_bytes = 0, npix = 0;  // bytes between pixels, bytes per pixel
  int per_step = 0;
  int r = 0;                // cursor: row, pixel, and byte offset within the pixel of the next line
  int64_t p = 0, off = 0;
  // The lines of [first byte, last byte + 63] of each pixel: every line the pixel touches,
  // whatever its alignment.
  FB_AI void step() {
    for (int i = 0; i < per_step && r < nrows; ++i) {
      __builtin_prefetch(rows[r] + p * pix_stride + off, 0, 2);
      off += 64;
      if (off >= pix_bytes + 63) {
        off = 0;
        if (++p == npix) {
          p = 0;
          ++r;
        }
      }
    }
  }
  // Whatever is left of the plan, at the end of the row.
  void finish() {
    per_step = std::numeric_limits<int>::max();
    step();
  }
};

// One output row of one channel chunk: dst[t] (t < count, pixel stride dst_step) = act(bias +
// sum over source rows r and column taps ci of wrows[r][wcol[ci] + c] * rows[r][(q[ci] +
// t*step)*C + c]). The source rows are zero-padded copies, so every read is inside them. Serves
// the forward (source = input rows) and the input gradient (source = gradient rows, one residue
// class of output columns).
template <typename T>
struct NhwcRow {
  const T* const* rows;   // padded source rows, at the chunk's first channel
  const T* const* wrows;  // per source row: its kernel row's weights, at the chunk's first channel
  int nrows;
  const int64_t* q;
  const int64_t* wcol;
  int ncol;
  int64_t step, count;
  T* dst;  // at the chunk's first channel
  int64_t dst_step;
  int64_t C;      // source pixel stride
  int64_t width;  // channels in the chunk (>= one vector)
  const T* bias;  // at the chunk's first channel, may be null
  const T** scratch;  // 2 * nrows * ncol pointers
  RowPrefetch* pf;    // may be null
  // Rows read in place rather than from the ring (sliding rows only): padded pixel p is source
  // pixel p - src_off, and source pixels outside [0, src_pixels) read as zeros (>= width zeros).
  // Ring rows: src_off 0, src_pixels kNoBorder.
  int64_t src_off = 0, src_pixels = kNoBorder;
  const T* zeros = nullptr;
  int act = 0;  // Act: in registers before the store, or (SiLU) over each block while in L1
  // A second output row in the same call (the inverted residual's stride-2 rows): its source
  // row r is rows[r + pair] (rows holds nrows + pair rows), its weights wrows[r], written at
  // dst2 (pixel stride dst_step). Where the kernel slides 3-wide rows with 32 registers, the
  // rows both read are loaded once (nhwc_row_slide); elsewhere the rows run one after the
  // other. 0: one row.
  int pair = 0;
  T* dst2 = nullptr;
};

// ---- channels_last weight gradient (depthwise_cpu_wgrad_kernels.h) -----------------------------

// Weight gradient, channels_last, m == 1, over rows [r0, r1) of the flattened (n, oh):
// D[t*C + c] += sum of g[n, oh, ow, c] * x[n, ih, iw, c] for tap t. Products are summed over one
// row segment in T, added into the float scratch F (taps*C, zero on entry and exit) and moved
// into D every few rows, so float sums stay short.
template <typename T>
struct NhwcWgrad {
  const T* g;
  const T* x;
  int64_t N, C, H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  const int64_t* ow_lo;  // per kw: valid output columns [ow_lo, ow_hi)
  const int64_t* ow_hi;
};

// ---- the table ------------------------------------------------------------------------------

// One instruction set's kernels for accumulation type T (float or double); lanes: T values per
// vector. What each entry does is said at its *_impl template.
template <typename T>
struct Kernels {
  void (*flat_conv)(const T*, const int64_t*, const T*, int, T, T*, int64_t);
  void (*flat_dot)(const T*, const T*, const int64_t*, int, int64_t, double*);
  void (*fill_phases)(const T*, const RowCopy*, int64_t, int64_t, T*);
  void (*interleave2)(const T*, const T*, T*, int64_t);
  void (*nhwc_row)(const NhwcRow<T>&);
  void (*copy_pixels)(const T*, int64_t, T*, int64_t, int64_t, int64_t);
  void (*stream_pixels)(const T*, int64_t, T*, int64_t, int64_t, int64_t);
  // fp16/bf16 source rows widened to T and output rows narrowed from it (widen_pixels_impl)
  template <typename S>
  struct PixelConvert {
    void (*widen)(const S*, int64_t, T*, int64_t, int64_t, int64_t);
    void (*narrow)(const T*, int64_t, S*, int64_t, int64_t, int64_t);
  };
  PixelConvert<c10::BFloat16> bf16;
  PixelConvert<c10::Half> f16;
  void (*nhwc_wgrad)(const NhwcWgrad<T>&, int64_t, int64_t, T*, double*);
  void (*apply_act)(T*, int64_t, int);
  void (*gather_block)(const T*, int64_t, int64_t, const int64_t*, T*);
  void (*scatter_block)(const T*, int64_t, T*, int64_t);
  int64_t lanes;
  template <typename S>
  const PixelConvert<S>& convert() const {
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      return bf16;
    } else {
      return f16;
    }
  }
};

// The kernels of the widest instruction set this CPU has (FASTBLOCKS_CPU_ISA=avx2|sse2 forces a
// narrower one), chosen at the first call. T: float or double.
template <typename T>
const Kernels<T>& kernels();

// Each ISA's table, defined in its own translation unit (csrc/cpu/depthwise_isa_*.cpp).
template <typename T>
Kernels<T> kernels_avx512();
template <typename T>
Kernels<T> kernels_avx2();
template <typename T>
Kernels<T> kernels_sse2();

}  // namespace fastblocks::cpu::dw
