// The host side of the channels_last row kernels, shared by the forward and the input gradient
// (csrc/cpu/depthwise_forward.cpp and depthwise_backward_input.cpp): the split into tasks (image,
// channel chunk, band of rows), the ring of zero-padded source rows each task reads through,
// the prefetch plan of the rows a later output row will need, and when output rows are
// streamed past the cache. Every threshold here was measured; the numbers are beside them.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "fastblocks/depthwise_cpu_host.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {

// Work split of the channels_last row kernels: tasks (image, channel chunk, band of rows); bands
// only split images when there are too few (image, chunk) pairs to fill the threads. Images
// that stream from memory (over 1 MB) take all channels in one chunk, so rows are read and
// written contiguously (8x144x56x56 3x3: 1.3-1.4x faster than 64-channel chunks); smaller ones
// take as many 4-vector slabs as keep the chunk's ring of padded source rows within 64 KB
// (8x672x14x14 5x5 and 8x960x7x7 5x5: 1.15x faster than one chunk), measured by sweep.
struct RowSplit {
  int64_t nch, nbands, rows;
  int64_t tasks(int64_t N) const { return N * nch * nbands; }
};

inline RowSplit row_split(int64_t N, int64_t rows, int64_t C, int64_t lanes, int64_t ring_pixels, int64_t elem,
                   int64_t image_bytes) {
  const int64_t ring_bytes = image_bytes > (int64_t(1) << 20) ? int64_t(512) << 10 : int64_t(64) << 10;
  RowSplit s;
  s.rows = rows;
  const int64_t slabs = std::max<int64_t>(1, C / (4 * lanes));
  const int64_t per_chunk = std::clamp<int64_t>(ring_bytes / (std::max<int64_t>(ring_pixels, 1) * 4 * lanes * elem), 1, slabs);
  s.nch = std::max<int64_t>(1, slabs / per_chunk);
  s.nbands = std::clamp<int64_t>(ceil_div(8 * at::get_num_threads(), N * s.nch), 1, std::max<int64_t>(rows, 1));
  return s;
}

// Chunk k of nch (nch <= C / (4 * lanes)): whole 4-vector slabs; the last chunk takes the tail.
inline std::pair<int64_t, int64_t> chunk_range(int64_t k, int64_t nch, int64_t C, int64_t lanes) {
  const int64_t slab = 4 * lanes, slabs = C / slab;
  const int64_t c0 = (k * slabs / nch) * slab;
  const int64_t c1 = k + 1 == nch ? C : ((k + 1) * slabs / nch) * slab;
  return {c0, c1};
}

// Task `task`: image n, channels [c0, c1), rows [r0, r1).
struct TaskRows {
  int64_t n, c0, c1, r0, r1;
};

inline TaskRows task_rows(const RowSplit& s, int64_t C, int64_t lanes, int64_t task) {
  const int64_t band = task % s.nbands, ck = (task / s.nbands) % s.nch, n = task / (s.nbands * s.nch);
  const auto [c0, c1] = chunk_range(ck, s.nch, C, lanes);
  return {n, c0, c1, band * s.rows / s.nbands, (band + 1) * s.rows / s.nbands};
}

// Calls fn(task, t, row) for every row of every task in [begin, end), rows in order (t =
// task_rows(task)).
template <typename F>
void for_task_rows(const RowSplit& s, int64_t C, int64_t lanes, int64_t begin, int64_t end, const F& fn) {
  for (int64_t task = begin; task < end; ++task) {
    const TaskRows t = task_rows(s, C, lanes, task);
    for (int64_t r = t.r0; r < t.r1; ++r) fn(task, t, r);
  }
}

// What the row kernels read through their ring: source rows of `rows` x `pixels` pixels of C
// channels of `elem` bytes from `base` (image n's row h at base + ((n * rows + h) * pixels) *
// C * elem).
struct RingSource {
  const char* base;
  int64_t rows, pixels, C, elem;
};

// Plans the prefetch, during row r of `task`, of the source rows that the row `ahead` rows
// later in this thread's run of tasks [task, end) adds to its ring: sources(row, f) calls f(h)
// for each source row h of output row `row`; a task's first row needs all its source rows,
// a later one those its predecessor did not read. blocks: about how many register blocks the
// current row has, to spread the lines over.
template <typename Sources>
RowPrefetch plan_prefetch(const RowSplit& s, int64_t lanes, int64_t task, int64_t r, int64_t end, int64_t ahead,
                          const RingSource& src, const Sources& sources, int64_t blocks) {
  RowPrefetch pf;
  if (ahead <= 0) return pf;
  TaskRows t = task_rows(s, src.C, lanes, task);
  int64_t row = r + ahead;
  while (row >= t.r1) {  // into the next tasks of the run
    if (++task >= end) return pf;
    row = row - t.r1 + (t = task_rows(s, src.C, lanes, task)).r0;
  }
  int64_t prev[16];
  int nprev = 0;
  if (row > t.r0) sources(row - 1, [&](int64_t h) { if (nprev < 16) prev[nprev++] = h; });
  sources(row, [&](int64_t h) {
    if (pf.nrows == 8 || std::find(prev, prev + nprev, h) != prev + nprev) return;
    pf.rows[pf.nrows++] = src.base + ((t.n * src.rows + h) * src.pixels * src.C + t.c0) * src.elem;
  });
  pf.pix_stride = src.C * src.elem;
  pf.pix_bytes = (t.c1 - t.c0) * src.elem;
  pf.npix = src.pixels;
  pf.per_step = int(ceil_div(pf.nrows * src.pixels * ((pf.pix_bytes + 127) / 64), std::max<int64_t>(blocks, 1)));
  return pf;
}

// Zero-padded copies of the source rows one task reads, for its channel chunk, in a ring of
// `span` rows: each source row is copied once and serves every output row that needs it, and
// the row kernels never meet a border. Source pixel s sits at padded pixel s + off; the pixels
// outside the source stay zero (the same ones for every row, so they are zeroed once).
template <typename T>
struct PaddedRows {
  int64_t span, Wp, off, stride;  // rows in the ring, padded pixels per row, s -> s + off, pixel stride
  AlignedBuf<T> buf;
  std::vector<int64_t> tag;  // per slot: the source row it holds
  PaddedRows(int64_t span_, int64_t Wp_, int64_t off_, int64_t stride_)
      : span(span_), Wp(Wp_), off(off_), stride(stride_), buf(span_ * Wp_ * stride_), tag(span_) {
    reset();
  }
  void reset() { std::fill(tag.begin(), tag.end(), std::numeric_limits<int64_t>::min()); }
  // Row `row` of the current image and chunk; src: its pixel 0 at the chunk's first channel,
  // in the storage type S (fp16/bf16 rows are widened to T here, in cache).
  template <typename S>
  const T* get(const Kernels<T>& isa, int64_t row, const S* src, int64_t src_pixels, int64_t src_stride,
               int64_t width) {
    const int64_t slot = floor_mod(row, span);
    T* d = buf.ptr + slot * Wp * stride;
    if (tag[slot] != row) {
      const int64_t p0 = std::max<int64_t>(0, -off), p1 = std::min(src_pixels, Wp - off);
      if (p1 > p0) {
        src += p0 * src_stride;
        d += (p0 + off) * stride;
        if constexpr (std::is_same_v<S, T>) {
          isa.copy_pixels(src, src_stride, d, stride, p1 - p0, width);
        } else {
          isa.template convert<S>().widen(src, src_stride, d, stride, p1 - p0, width);
        }
        d = buf.ptr + slot * Wp * stride;
      }
      tag[slot] = row;
    }
    return d;
  }
  // The row the kernels read: the tensor's own row where `in_place` (possible only when S is
  // T; the kernels then take the borders from a row of zeros), else get()'s padded copy.
  template <typename S>
  const T* read(const Kernels<T>& isa, bool in_place, int64_t row, const S* src, int64_t src_pixels,
                int64_t src_stride, int64_t width) {
    if constexpr (std::is_same_v<S, T>) {
      if (in_place) return src;
    }
    return get(isa, row, src, src_pixels, src_stride, width);
  }
};

inline int64_t max_chunk_width(const RowSplit& s, int64_t C, int64_t lanes) {
  int64_t w = 0;
  for (int64_t k = 0; k < s.nch; ++k) {
    const auto [c0, c1] = chunk_range(k, s.nch, C, lanes);
    w = std::max(w, c1 - c0);
  }
  return w;
}

// Outputs over this size are written with non-temporal stores: they outgrow the last-level
// cache, so caching them only evicts the input still to be read (32x672x14x14 5x5 and
// 32x240x28x28 5x5 channels_last forwards, 1 thread: 151 -> 129 and 241 -> 184 us per image).
// Only where every pixel starts on a cache line: non-temporal and plain stores into the same
// line (72 channels: 288-byte pixels) made 32x72x56x56 3x3 2.5x slower than eager.
inline bool streams_to_memory(const at::Tensor& y) {
  return y.nbytes() >= (int64_t(16) << 20) && y.size(1) * y.element_size() % 64 == 0 &&
         reinterpret_cast<uintptr_t>(y.const_data_ptr()) % 64 == 0;
}

// Rows ahead whose source rows are prefetched during a row (1 and 2 measured alike; 1 keeps
// the fewest lines in flight), when source and output together outgrow the last-level cache.
// Batch-32 channels_last forwards, 2 threads of an AMD EPYC, geomean over the bench's 28
// layers: 1.14x eager without prefetching, 1.49x with (on a 2-thread Xeon with a large L3:
// 1.31-1.35x either way, also with prefetching below the threshold). Below the threshold,
// on the EPYC, they cost more than they save (measured on ring rows: 32x960x7x7 3x3 and
// 32x1152x7x7 5x5, 0.76-0.82x eager with, 0.85-0.92x without).
constexpr int64_t kPrefetchRows = 1;
inline int64_t prefetch_rows(const at::Tensor& src, const at::Tensor& out) {
  return src.nbytes() + out.nbytes() >= (int64_t(16) << 20) ? kPrefetchRows : 0;
}

// Tasks per chunk of parallel_dynamic for the ring kernels: enough for every task to be worth
// its thread, and several where tasks are many, so that a task's last row knows the next
// task's first rows to prefetch (a thread's next chunk is not known in advance).
inline int64_t ring_grain(int64_t tasks, int64_t work_per_task) {
  return std::max(grain_for(work_per_task), std::min<int64_t>(8, tasks / (8 * at::get_num_threads())));
}

// Writes a row of npix pixels x width channels from the kernels' row buffer (T, pixel stride
// rstride) to the tensor (S, pixel stride C): narrowed for fp16/bf16, streamed past the cache
// when `stream`; nothing to do when the kernels wrote the tensor directly (row == out).
template <typename S, typename T>
void store_row(const Kernels<T>& isa, const T* row, int64_t rstride, S* out, int64_t C, int64_t npix, int64_t width,
               bool stream) {
  if constexpr (std::is_same_v<S, T>) {
    if (stream) isa.stream_pixels(row, rstride, out, C, npix, width);
  } else {
    isa.template convert<S>().narrow(row, rstride, out, C, npix, width);
  }
}

}  // namespace fastblocks::cpu::dw
