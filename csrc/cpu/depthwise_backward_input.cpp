// The depthwise CPU input gradient, gx = conv_transpose(grad, weight), on the forward's three
// paths (csrc/cpu/depthwise.cpp): NCHW residue classes over zero-padded gradient planes
// (backward_input_nchw_phases), small NCHW planes in channel blocks
// (backward_input_nchw_blocked), and channels_last rows through the ring (backward_input_nhwc).
// The last two run the forward's row kernel once per residue class of input columns, whose
// taps ColumnTaps lists: the input gradient is written as a gather, so every gx element is
// summed once, in a fixed order, and written once.
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

// NCHW, any geometry: input pixels fall into sh x sw residue classes (ih % sh, iw % sw), each a
// 1-d tap sum (flat_conv) over zero-padded gradient planes of NB stacked images; the column
// residues of an input row are interleaved back together on the way out.
template <typename scalar_t>
void backward_input_nchw_phases(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                                at::Tensor& gx) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& isa = kernels<T>();
  const int64_t lanes = isa.lanes;
  // Zero-padded gradient planes G[i][j][LH + oh][LW + ow] (image i of the task, multiplier
  // index j); input pixel (sh*a + rb, sw*t + rp) reads G[i][j][a + qh + LH][t + qw + LW] for the
  // taps of its residue class: a 1-d sum over f = i*gslot + a*GW + t.
  const int64_t LH = std::max<int64_t>(0, -floor_div(g.ph - (g.KH - 1) * g.dh, g.sh));
  const int64_t LW = std::max<int64_t>(0, -floor_div(g.pw - (g.KW - 1) * g.dw, g.sw));
  const int64_t qh_max = floor_div(g.sh - 1 + g.ph, g.sh), qw_max = floor_div(g.sw - 1 + g.pw, g.sw);
  const int64_t GH = std::max(LH + g.OH, LH + qh_max + ceil_div(g.H, g.sh));
  const int64_t GW = std::max(LW + g.OW, LW + qw_max + ceil_div(g.W, g.sw));
  // Slot stride of one image: whole vectors plus one, so per-image output runs rounded up to
  // whole vectors stay inside their slot.
  const int64_t gplane = GH * GW, gslot = round_up(g.M * gplane, lanes) + lanes;
  const int64_t NB = std::clamp<int64_t>(kStackElems / gslot, 1, g.N);
  const int64_t groups = ceil_div(g.N, NB);
  const int64_t gsize = NB * gslot + GW + lanes;
  const int64_t Amax = ceil_div(g.H, g.sh);
  const int64_t olen = NB * gslot;
  // As in the forward: one sum across the stacked images only while the gaps between them stay
  // under a quarter of their outputs.
  const bool joint = 4 * (gslot - Amax * GW) <= Amax * GW;
  const int64_t nres_h = std::min(g.sh, g.H), nres_w = std::min(g.sw, g.W);
  // Taps of each residue class (rb, rp): weight index (j, kh, kw) and scratch offset.
  const int64_t nt = g.taps();
  std::vector<std::vector<int64_t>> rtap(nres_h * nres_w), rbase(nres_h * nres_w);
  for (int64_t rb = 0; rb < nres_h; ++rb) {
    for (int64_t rp = 0; rp < nres_w; ++rp) {
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const int64_t vh = rb + g.ph - kh * g.dh;
        if (floor_mod(vh, g.sh) != 0) continue;
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const int64_t vw = rp + g.pw - kw * g.dw;
          if (floor_mod(vw, g.sw) != 0) continue;
          for (int64_t j = 0; j < g.M; ++j) {
            rtap[rb * nres_w + rp].push_back(j * nt + kh * g.KW + kw);
            rbase[rb * nres_w + rp].push_back(j * gplane + (floor_div(vh, g.sh) + LH) * GW + floor_div(vw, g.sw) + LW);
          }
        }
      }
    }
  }
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  parallel_dynamic(g.C * groups, grain_for(NB * g.M * g.H * g.W * nt), [&](const auto& next) {
    std::vector<T> G(gsize, T(0)), out(nres_w * olen), wc(g.M * nt), w(g.M * nt), tmp, row(g.W);
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups, n0 = (task % groups) * NB, nb = std::min(NB, g.N - n0);
      for (int64_t i = 0; i < nb; ++i) {
        for (int64_t j = 0; j < g.M; ++j) {
          const T* src = plane_as<T>(gp + ((n0 + i) * g.OC() + c * g.M + j) * g.OH * g.OW, g.OH * g.OW, tmp);
          copy_rows(src, g.OW, G.data() + i * gslot + j * gplane + LH * GW + LW, GW, g.OH, g.OW);
        }
      }
      for (int64_t q = 0; q < g.M * nt; ++q) wc[q] = static_cast<T>(wp[c * g.M * nt + q]);
      for (int64_t rb = 0; rb < nres_h; ++rb) {
        const int64_t Ar = ceil_div(g.H - rb, g.sh);
        for (int64_t rp = 0; rp < nres_w; ++rp) {
          const std::vector<int64_t>& taps = rtap[rb * nres_w + rp];
          for (size_t q = 0; q < taps.size(); ++q) w[q] = wc[taps[q]];
          if (joint) {
            isa.flat_conv(G.data(), rbase[rb * nres_w + rp].data(), w.data(), int(taps.size()), T(0),
                          out.data() + rp * olen, round_up((nb - 1) * gslot + Ar * GW, lanes));
          } else {
            for (int64_t i = 0; i < nb; ++i) {
              isa.flat_conv(G.data() + i * gslot, rbase[rb * nres_w + rp].data(), w.data(), int(taps.size()), T(0),
                            out.data() + rp * olen + i * gslot, round_up(Ar * GW, lanes));
            }
          }
        }
        // Input row sh*a + rb gathers its column residues back together.
        for (int64_t i = 0; i < nb; ++i) {
          scalar_t* gx_plane = gxp + ((n0 + i) * g.C + c) * g.H * g.W;
          for (int64_t a = 0; a < Ar; ++a) {
            scalar_t* dst = gx_plane + (a * g.sh + rb) * g.W;
            const T* o = out.data() + i * gslot + a * GW;
            if (nres_w == 1) {
              copy_rows(o, 0, dst, 0, 1, g.W);
            } else if (nres_w == 2) {
              if constexpr (std::is_same_v<T, scalar_t>) {
                isa.interleave2(o, o + olen, dst, g.W);
              } else {
                isa.interleave2(o, o + olen, row.data(), g.W);
                copy_rows(row.data(), 0, dst, 0, 1, g.W);
              }
            } else {
              for (int64_t iw = 0; iw < g.W; ++iw) {
                dst[iw] = static_cast<scalar_t>(o[(iw % g.sw) * olen + iw / g.sw]);
              }
            }
          }
        }
      }
    }
  });
}

// The input gradient as a gather: input column iw = rp + sw*t (residue class rp = iw % sw)
// reads gradient column t + q[rp][i] with weight column wcol[rp][i] (kw * col_step, the
// weight's stride between kernel columns in the caller's layout). q is shifted so the
// leftmost tap reads padded gradient column 0: gradient column ow sits at ow - qmin in padded
// rows of Wp pixels.
struct ColumnTaps {
  std::vector<std::vector<int64_t>> q, wcol;
  int64_t qmin = 0, Wp = 1;
  int64_t nres() const { return static_cast<int64_t>(q.size()); }
};

ColumnTaps column_taps(const Geom& g, int64_t col_step) {
  ColumnTaps t;
  const int64_t nres = std::min(g.sw, g.W);
  t.q.resize(nres);
  t.wcol.resize(nres);
  int64_t qmax = 0;
  bool any = false;
  for (int64_t rp = 0; rp < nres; ++rp) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t v = rp + g.pw - kw * g.dw;
      if (floor_mod(v, g.sw) != 0) continue;
      const int64_t qq = floor_div(v, g.sw);
      t.qmin = any ? std::min(t.qmin, qq) : qq;
      qmax = any ? std::max(qmax, qq) : qq;
      any = true;
      t.q[rp].push_back(qq);
      t.wcol[rp].push_back(kw * col_step);
    }
  }
  for (auto& v : t.q) {
    for (auto& qq : v) qq -= t.qmin;
  }
  t.Wp = std::max<int64_t>(1, qmax - t.qmin + ceil_div(g.W, g.sw));
  return t;
}

// grad and gx in the storage type S, the sums in T, as in forward_nhwc.
template <typename S, typename T>
void backward_input_nhwc(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                         at::Tensor& gx) {
  constexpr bool same_type = std::is_same_v<S, T>;  // fp32/fp64: no conversion
  const Kernels<T>& isa = kernels<T>();
  const AlignedBuf<T> wT = tap_major<T>(weight, g);
  const S* gp = grad.const_data_ptr<S>();
  const T* wp = wT.ptr;
  S* gxp = gx.mutable_data_ptr<S>();
  const int64_t C = g.C;
  const ColumnTaps taps = column_taps(g, C);
  const auto& q = taps.q;
  const auto& wcol = taps.wcol;
  const int64_t nres = taps.nres(), qmin = taps.qmin, Wp = taps.Wp;
  // Calls f(kh, oh) for the gradient rows that reach input row ih through kernel row kh.
  const auto sources = [&](int64_t ih, const auto& f) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t v = ih + g.ph - kh * g.dh;
      if (floor_mod(v, g.sh) != 0) continue;
      const int64_t oh = floor_div(v, g.sh);
      if (oh >= 0 && oh < g.OH) f(kh, oh);
    }
  };
  const RingSource src{reinterpret_cast<const char*>(gp), g.OH, g.OW, C, int64_t(sizeof(S))};
  const int64_t span = (g.KH - 1) * g.dh / g.sh + 2;
  const RowSplit split = row_split(g.N, g.H, C, isa.lanes, span * Wp, sizeof(T), g.H * g.W * C * sizeof(T));
  const int64_t stride = max_chunk_width(split, C, isa.lanes);
  const int64_t work = g.H / split.nbands * g.W * (C / split.nch) * ceil_div(g.KH, g.sh) * ceil_div(g.KW, g.sw);
  const bool stream = same_type && streams_to_memory(gx);
  const int64_t ahead = prefetch_rows(grad, gx);
  // fp32/fp64 gradient rows are read in place, as the forward reads its input, when every
  // residue class of input columns slides (its taps are consecutive gradient columns).
  // Batch-32 channels_last forward+backward bench, 2 threads of a Xeon (AVX-512), two runs
  // each: 1.42-1.43x eager geomean copying, 1.46x in place.
  bool in_place = same_type && g.dw == 1;
  for (int64_t rp = 0; rp < nres; ++rp) {
    std::vector<int64_t> sorted = q[rp];
    std::sort(sorted.begin(), sorted.end());
    const bool consecutive = std::adjacent_find(sorted.begin(), sorted.end(),
                                                [](int64_t a, int64_t b) { return b != a + 1; }) == sorted.end();
    in_place = in_place && slides(1, int64_t(sorted.size())) && consecutive;
  }
  const AlignedBuf<T> zeros(in_place ? stride : 0);
  parallel_dynamic(split.tasks(g.N), ring_grain(split.tasks(g.N), work), [&](const auto& next) {
    std::vector<const T*> rows(g.KH), wr(g.KH), scratch(2 * g.taps());
    PaddedRows<T> pad(in_place ? 0 : span, Wp, -qmin, stride);
    // One input-gradient row in T before narrowing or streaming to memory.
    AlignedBuf<T> row(same_type && !stream ? 0 : g.W * stride);
    int64_t cur_n = -1, cur_c = -1;
    for (int64_t begin, end; next(begin, end);)
    for_task_rows(split, C, isa.lanes, begin, end, [&](int64_t task, const TaskRows& t, int64_t ih) {
      const int64_t n = t.n, c0 = t.c0, c1 = t.c1;
      if (n != cur_n || c0 != cur_c) {
        pad.reset();
        cur_n = n;
        cur_c = c0;
      }
      int nrows = 0;
      sources(ih, [&](int64_t kh, int64_t oh) {
        rows[nrows] = pad.read(isa, in_place, oh, gp + (n * g.OH + oh) * g.OW * C + c0, g.OW, C, c1 - c0);
        wr[nrows++] = wp + kh * g.KW * C + c0;
      });
      RowPrefetch pf = plan_prefetch(split, isa.lanes, task, ih, end, ahead, src,
                                     [&](int64_t r, const auto& f) { sources(r, [&](int64_t, int64_t oh) { f(oh); }); },
                                     ceil_div(c1 - c0, isa.lanes) * ceil_div(g.W, 8));
      S* out = gxp + (n * g.H + ih) * g.W * C + c0;
      T* dst;
      int64_t pix;  // pixel stride of dst
      if (same_type && !stream) {
        dst = reinterpret_cast<T*>(out);
        pix = C;
      } else {
        dst = row.ptr;
        pix = stride;
      }
      for (int64_t rp = 0; rp < nres; ++rp) {
        NhwcRow<T> a{rows.data(), wr.data(), nrows, q[rp].data(), wcol[rp].data(), int(q[rp].size()),
                     1, ceil_div(g.W - rp, g.sw), dst + rp * pix, g.sw * pix,
                     stride, c1 - c0, nullptr, scratch.data(), &pf};
        if (in_place) {
          a.C = C;
          a.src_off = -qmin;  // padded column p is gradient column p + qmin
          a.src_pixels = g.OW;
          a.zeros = zeros.ptr;
        }
        isa.nhwc_row(a);
      }
      pf.finish();
      store_row<S, T>(isa, dst, pix, out, C, g.W, c1 - c0, stream);
    });
    if (stream) _mm_sfence();
  });
}

// Input gradient in channel blocks: the gradient block goes into src_block[oh][col][L]
// (gradient column ow at col ow - qmin) and each input row is the channels_last transposed row
// sum over it.
template <typename scalar_t>
void backward_input_nchw_blocked(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                                 at::Tensor& gx) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& isa = kernels<T>();
  const int64_t L = isa.lanes, nt = g.taps(), HW = g.H * g.W, OHW = g.OH * g.OW;
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const ColumnTaps taps = column_taps(g, L);
  const auto& q = taps.q;
  const auto& wcol = taps.wcol;
  const int64_t nres = taps.nres(), qmin = taps.qmin, Wp = taps.Wp;
  std::vector<int64_t> idx(OHW);
  for (int64_t p = 0; p < OHW; ++p) {
    const int64_t col = p % g.OW - qmin;
    idx[p] = col >= 0 && col < Wp ? (p / g.OW) * Wp + col : -1;
  }
  const int64_t nblk = ceil_div(g.C, L);
  const int64_t work = HW * L * ceil_div(g.KH, g.sh) * ceil_div(g.KW, g.sw);
  parallel_dynamic(g.N * nblk, grain_for(work), [&](const auto& next) {
    AlignedBuf<T> src_block(g.OH * Wp * L), out_block(HW * L), wb(nt * L);
    std::fill(src_block.ptr, src_block.ptr + g.OH * Wp * L, T(0));
    std::vector<const T*> rows(g.KH), wr(g.KH), scratch(2 * nt);
    for (int64_t begin, end; next(begin, end);)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / nblk, c0 = block_c0(task % nblk, g.C, L);
      gather_planes(isa, gp + (n * g.C + c0) * OHW, OHW, OHW, idx.data(), src_block.ptr);
      block_weights(wp, c0, nt, L, wb.ptr);
      for (int64_t ih = 0; ih < g.H; ++ih) {
        int nrows = 0;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t v = ih + g.ph - kh * g.dh;
          if (floor_mod(v, g.sh) != 0) continue;
          const int64_t oh = floor_div(v, g.sh);
          if (oh < 0 || oh >= g.OH) continue;
          rows[nrows] = src_block.ptr + oh * Wp * L;
          wr[nrows++] = wb.ptr + kh * g.KW * L;
        }
        for (int64_t rp = 0; rp < nres; ++rp) {
          NhwcRow<T> a{rows.data(), wr.data(), nrows, q[rp].data(), wcol[rp].data(), int(q[rp].size()),
                       1, ceil_div(g.W - rp, g.sw), out_block.ptr + (ih * g.W + rp) * L, g.sw * L,
                       L, L, nullptr, scratch.data()};
          isa.nhwc_row(a);
        }
      }
      scatter_planes(isa, out_block.ptr, HW, gxp + (n * g.C + c0) * HW, HW);
    }
  });
}

}  // namespace

void backward_input_nchw(const at::Tensor& grad, const at::Tensor& weight, const Geom& g, at::Tensor& gx) {
  FB_DISPATCH_FLOATING(grad.scalar_type(), "depthwise_backward_input", [&] {
    if (nchw_blocked(g, kernels<at::opmath_type<scalar_t>>().lanes)) {
      backward_input_nchw_blocked<scalar_t>(grad, weight, g, gx);
    } else {
      backward_input_nchw_phases<scalar_t>(grad, weight, g, gx);
    }
  });
}

void backward_input_channels_last(const at::Tensor& grad, const at::Tensor& weight, const Geom& g,
                                  at::Tensor& gx) {
  FB_DISPATCH_FLOATING(grad.scalar_type(), "depthwise_backward_input", [&] {
    backward_input_nhwc<scalar_t, at::opmath_type<scalar_t>>(grad, weight, g, gx);
  });
}

}  // namespace fastblocks::cpu::dw
