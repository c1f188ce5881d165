// The depthwise CPU forward, y = act(conv(x, weight) + bias), on its three paths (the overview
// in csrc/cpu/depthwise.cpp says when each is taken and why): NCHW planes split into stride
// phases (forward_nchw_phases), small NCHW planes in channel blocks (forward_nchw_blocked), and
// channels_last rows read through a ring of padded rows (forward_nhwc). The sums run in the
// accumulation type (float for fp16/bf16/fp32, double for fp64) through the ISA kernel table;
// the activation is applied before y is written, once.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/depthwise_cpu_channel_blocks.h"
#include "fastblocks/depthwise_cpu_host.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_passes.h"
#include "fastblocks/depthwise_cpu_phase_plan.h"
#include "fastblocks/depthwise_cpu_row_ring.h"

namespace fastblocks::cpu::dw {
namespace {

// NCHW, any geometry: each task copies one channel of NB images into the phase-split scratch
// (PhasePlan) and sums its taps as 1-d runs (flat_conv), then copies the valid columns out.
template <typename scalar_t>
void forward_nchw_phases(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                         const Geom& g, int act, at::Tensor& y) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& isa = kernels<T>();
  const PhasePlan plan = phase_plan(g, isa.lanes);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t nt = g.taps(), NB = plan.NB, groups = ceil_div(g.N, NB);
  parallel_dynamic(g.C * groups, grain_for(NB * g.M * plan.nflat * nt), [&](const auto& next) {
    std::vector<T> P(plan.scratch_size(isa.lanes), T(0)), out(NB * plan.pstride), w(nt), tmp;
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups, n0 = (task % groups) * NB, nb = std::min(NB, g.N - n0);
      for (int64_t i = 0; i < nb; ++i) {
        isa.fill_phases(plane_as<T>(xp + ((n0 + i) * g.C + c) * g.H * g.W, g.H * g.W, tmp), plan.rows.data(),
                        int64_t(plan.rows.size()), g.sw, P.data() + i * plan.pstride);
      }
      const int64_t len = plan.flat_len(nb, isa.lanes), plane_len = plan.flat_len(1, isa.lanes);
      for (int64_t j = 0; j < g.M; ++j) {
        const int64_t oc = c * g.M + j;
        for (int64_t t = 0; t < nt; ++t) w[t] = static_cast<T>(wp[oc * nt + t]);
        const T init = bp ? static_cast<T>(bp[oc]) : T(0);
        if (plan.joint) {
          isa.flat_conv(P.data(), plan.base.data(), w.data(), int(nt), init, out.data(), len);
          if (act) isa.apply_act(out.data(), len, act);
        } else {
          for (int64_t i = 0; i < nb; ++i) {
            T* o = out.data() + i * plan.pstride;
            isa.flat_conv(P.data() + i * plan.pstride, plan.base.data(), w.data(), int(nt), init, o, plane_len);
            if (act) isa.apply_act(o, plan.nflat, act);
          }
        }
        for (int64_t i = 0; i < nb; ++i) {
          copy_rows(out.data() + i * plan.pstride, plan.PW, yp + ((n0 + i) * g.OC() + oc) * g.OH * g.OW, g.OW,
                    g.OH, g.OW);
        }
      }
    }
  });
}

// x and y in the storage type S, the sums in T. fp16/bf16 (S != T) are widened as the padded
// rows are copied and narrowed from a row of T after the epilogue, so the tensors are read and
// written once, in their own type.
template <typename S, typename T>
void forward_nhwc(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                  const Geom& g, int act, at::Tensor& y) {
  constexpr bool same_type = std::is_same_v<S, T>;  // fp32/fp64: no conversion
  const Kernels<T>& isa = kernels<T>();
  const AlignedBuf<T> wT = tap_major<T>(weight, g);
  const AlignedBuf<T> bT = bias ? to_aligned<T>(*bias) : AlignedBuf<T>(0);
  const S* xp = x.const_data_ptr<S>();
  const T* wp = wT.ptr;
  const T* bp = bias ? bT.ptr : nullptr;
  S* yp = y.mutable_data_ptr<S>();
  const int64_t C = g.C;
  // Padded input rows: output column t, tap kw reads padded pixel t*sw + kw*dw (input column
  // t*sw + kw*dw - pw).
  std::vector<int64_t> q(g.KW), wcol(g.KW);
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    q[kw] = kw * g.dw;
    wcol[kw] = kw * C;
  }
  // Calls f(kh, ih) for the kernel rows of output row oh that fall inside the input.
  const auto sources = [&](int64_t oh, const auto& f) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih >= 0 && ih < g.H) f(kh, ih);
    }
  };
  const RingSource src{reinterpret_cast<const char*>(xp), g.H, g.W, C, int64_t(sizeof(S))};
  const int64_t Wp = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1, span = (g.KH - 1) * g.dh + 1;
  const RowSplit split = row_split(g.N, g.OH, C, isa.lanes, span * Wp, sizeof(T), g.H * g.W * C * sizeof(T));
  const int64_t stride = max_chunk_width(split, C, isa.lanes);
  const int64_t work = g.OH / split.nbands * g.OW * (C / split.nch) * g.taps();
  const bool stream = same_type && streams_to_memory(y);
  const int64_t ahead = prefetch_rows(x, y);
  // fp32/fp64 sliding rows read the input in place, the borders through a row of zeros: the
  // copy to the ring took a fifth of the time with the input in cache (perf, 2x672x14x14 5x5).
  // Batch-32 channels_last forwards, 2 threads, bench geomean: 1.41x eager copying, 1.49x in
  // place (same build, one after the other); batch 1: 1.17x in the committed results before,
  // 1.39x after.
  const bool in_place = same_type && g.dw == 1 && slides(g.sw, g.KW);
  const AlignedBuf<T> zeros(in_place ? stride : 0);
  parallel_dynamic(split.tasks(g.N), ring_grain(split.tasks(g.N), work), [&](const auto& next) {
    std::vector<const T*> rows(g.KH), wr(g.KH), scratch(2 * g.taps());
    PaddedRows<T> pad(in_place ? 0 : span, Wp, g.pw, stride);
    // One output row in T before narrowing or streaming to memory.
    AlignedBuf<T> row(same_type && !stream ? 0 : g.OW * stride);
    int64_t cur_n = -1, cur_c = -1;
    for (int64_t begin, end; next(begin, end);)
    for_task_rows(split, C, isa.lanes, begin, end, [&](int64_t task, const TaskRows& t, int64_t oh) {
      const int64_t n = t.n, c0 = t.c0, c1 = t.c1;
      if (n != cur_n || c0 != cur_c) {
        pad.reset();
        cur_n = n;
        cur_c = c0;
      }
      int nrows = 0;
      sources(oh, [&](int64_t kh, int64_t ih) {
        rows[nrows] = pad.read(isa, in_place, ih, xp + (n * g.H + ih) * g.W * C + c0, g.W, C, c1 - c0);
        wr[nrows++] = wp + kh * g.KW * C + c0;
      });
      RowPrefetch pf = plan_prefetch(split, isa.lanes, task, oh, end, ahead, src,
                                     [&](int64_t r, const auto& f) { sources(r, [&](int64_t, int64_t ih) { f(ih); }); },
                                     ceil_div(c1 - c0, isa.lanes) * ceil_div(g.OW, 8));
      S* out = yp + (n * g.OH + oh) * g.OW * C + c0;
      T* dst;
      int64_t dst_step;
      if (same_type && !stream) {
        dst = reinterpret_cast<T*>(out);
        dst_step = C;
      } else {
        dst = row.ptr;
        dst_step = stride;
      }
      NhwcRow<T> a{rows.data(), wr.data(), nrows, q.data(), wcol.data(), int(g.KW), g.sw, g.OW,
                   dst, dst_step, stride, c1 - c0, bp ? bp + c0 : nullptr, scratch.data(), &pf};
      if (in_place) {
        a.C = C;
        a.src_off = g.pw;
        a.src_pixels = g.W;
        a.zeros = zeros.ptr;
      }
      a.act = act;  // in registers, or over each block while it is in L1
      isa.nhwc_row(a);
      pf.finish();
      store_row<S, T>(isa, dst, dst_step, out, C, g.OW, c1 - c0, stream);
    });
    if (stream) _mm_sfence();
  });
}

// NCHW planes of up to kBlockedMaxPixels, M == 1: one task per (image, block of L channels).
template <typename scalar_t>
void forward_nchw_blocked(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                          const Geom& g, int act, at::Tensor& y) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& isa = kernels<T>();
  const int64_t L = isa.lanes, nt = g.taps(), HW = g.H * g.W, OHW = g.OH * g.OW;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  // src_block[ih][col][L]: the L input planes as pixel vectors, input column iw at col iw + pw
  // (columns past Wp are never read);
  // rows outside the input are left out of the tap sums, as in forward_nhwc.
  const int64_t Wp = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  std::vector<int64_t> idx(HW), q(g.KW), wcol(g.KW);
  for (int64_t p = 0; p < HW; ++p) {
    const int64_t col = p % g.W + g.pw;
    idx[p] = col < Wp ? (p / g.W) * Wp + col : -1;
  }
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    q[kw] = kw * g.dw;
    wcol[kw] = kw * L;
  }
  const int64_t nblk = ceil_div(g.C, L);
  parallel_dynamic(g.N * nblk, grain_for(OHW * L * nt), [&](const auto& next) {
    AlignedBuf<T> src_block(g.H * Wp * L), out_block(OHW * L), wb(nt * L), bb(L);
    std::fill(src_block.ptr, src_block.ptr + g.H * Wp * L, T(0));
    std::vector<const T*> rows(g.KH), wr(g.KH), scratch(2 * nt);
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / nblk, c0 = block_c0(task % nblk, g.C, L);
      gather_planes(isa, xp + (n * g.C + c0) * HW, HW, HW, idx.data(), src_block.ptr);
      block_weights(wp, c0, nt, L, wb.ptr);
      if (bp) {
        for (int64_t l = 0; l < L; ++l) bb.ptr[l] = static_cast<T>(bp[c0 + l]);
      }
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        int nrows = 0;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          rows[nrows] = src_block.ptr + ih * Wp * L;
          wr[nrows++] = wb.ptr + kh * g.KW * L;
        }
        NhwcRow<T> a{rows.data(), wr.data(), nrows, q.data(), wcol.data(), int(g.KW), g.sw, g.OW,
                     out_block.ptr + oh * g.OW * L, L, L, L, bp ? bb.ptr : nullptr, scratch.data()};
        a.act = act;
        isa.nhwc_row(a);
      }
      scatter_planes(isa, out_block.ptr, OHW, yp + (n * g.C + c0) * OHW, OHW);
    }
  });
}

}  // namespace

void forward_nchw(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                  const Geom& g, int act, at::Tensor& y) {
  FB_DISPATCH_FLOATING(x.scalar_type(), "depthwise_forward", [&] {
    if (nchw_blocked(g, kernels<at::opmath_type<scalar_t>>().lanes)) {
      forward_nchw_blocked<scalar_t>(x, weight, bias, g, act, y);
    } else {
      forward_nchw_phases<scalar_t>(x, weight, bias, g, act, y);
    }
  });
}

void forward_channels_last(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                           const Geom& g, int act, at::Tensor& y) {
  FB_DISPATCH_FLOATING(x.scalar_type(), "depthwise_forward", [&] {
    forward_nhwc<scalar_t, at::opmath_type<scalar_t>>(x, weight, bias, g, act, y);
  });
}

}  // namespace fastblocks::cpu::dw
