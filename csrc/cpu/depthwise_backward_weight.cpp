// The depthwise CPU weight gradient, gw[oc][kh][kw] = sum over images and output pixels of
// grad * the input pixel tap (kh, kw) reads, on the forward's three paths (csrc/cpu/depthwise.cpp):
// per-tap dot products over phase-split planes (backward_weight_nchw_phases), small NCHW planes
// in channel blocks (backward_weight_nchw_blocked), and channels_last rows
// (backward_weight_nhwc). Each sum is split into a fixed number of pieces, each piece summed
// in a fixed order by one task and the pieces added in order, so the result does not depend
// on the number of threads.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/depthwise_cpu_channel_blocks.h"
#include "fastblocks/depthwise_cpu_host.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_passes.h"
#include "fastblocks/depthwise_cpu_phase_plan.h"

namespace fastblocks::cpu::dw {
namespace {

// The weight gradient of input channel c (its M output channels, all taps; NCHW), summed in
// double over exactly the (output, input) pixel pairs each tap joins: slow, for channels whose
// input holds inf or NaN (see backward_weight_nchw_phases).
template <typename scalar_t>
void weight_grad_channel_direct(const scalar_t* gp, const scalar_t* xp, const Geom& g, int64_t c, scalar_t* out) {
  for (int64_t j = 0; j < g.M; ++j) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        double sum = 0;
        for (int64_t n = 0; n < g.N; ++n) {
          const scalar_t* gplane = gp + (n * g.OC() + c * g.M + j) * g.OH * g.OW;
          const scalar_t* xplane = xp + (n * g.C + c) * g.H * g.W;
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t ow = 0; ow < g.OW; ++ow) {
              const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              sum += widen<double>(gplane[oh * g.OW + ow]) * widen<double>(xplane[ih * g.W + iw]);
            }
          }
        }
        out[(j * g.KH + kh) * g.KW + kw] = static_cast<scalar_t>(sum);
      }
    }
  }
}

// NCHW, any geometry: one task per input channel; per tap, the dot product of the gradient
// planes (zero outside the valid outputs) with the tap's run of the phase-split scratch
// (flat_dot), NB images at a time, summed in double.
template <typename scalar_t>
void backward_weight_nchw_phases(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                                 at::Tensor& gw) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& isa = kernels<T>();
  const int64_t L = isa.lanes;
  const PhasePlan plan = phase_plan(g, L);
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
  const int64_t nt = g.taps(), NB = plan.NB, gsz = NB * plan.pstride;
  // One task per input channel: its m output channels' sums never leave the task, so the
  // order of additions is fixed.
  at::parallel_for(0, g.C, grain_for(g.N * g.M * plan.nflat * nt), [&](int64_t begin, int64_t end) {
    // Gf: the gradient planes laid out like the scratch's output positions, zero elsewhere, so
    // the dot products ignore the extra columns and the gaps between stacked planes.
    std::vector<T> P(plan.scratch_size(L), T(0)), Gf(g.M * gsz, T(0)), tmp;
    std::vector<double> D(g.M * nt * L);
    for (int64_t c = begin; c < end; ++c) {
      std::fill(D.begin(), D.end(), 0.0);
      for (int64_t n0 = 0; n0 < g.N; n0 += NB) {
        const int64_t nb = std::min(NB, g.N - n0);
        for (int64_t i = 0; i < nb; ++i) {
          isa.fill_phases(plane_as<T>(xp + ((n0 + i) * g.C + c) * g.H * g.W, g.H * g.W, tmp), plan.rows.data(),
                          int64_t(plan.rows.size()), g.sw, P.data() + i * plan.pstride);
          for (int64_t j = 0; j < g.M; ++j) {
            const T* src = plane_as<T>(gp + ((n0 + i) * g.OC() + c * g.M + j) * g.OH * g.OW, g.OH * g.OW, tmp);
            copy_rows(src, g.OW, Gf.data() + j * gsz + i * plan.pstride, plan.PW, g.OH, g.OW);
          }
        }
        if (nb < NB) {  // a short last group: clear the planes the previous group left behind
          for (int64_t j = 0; j < g.M; ++j) {
            std::fill(Gf.begin() + j * gsz + nb * plan.pstride, Gf.begin() + (j + 1) * gsz, T(0));
          }
        }
        for (int64_t j = 0; j < g.M; ++j) {
          if (plan.joint) {
            isa.flat_dot(Gf.data() + j * gsz, P.data(), plan.base.data(), int(nt), plan.flat_len(nb, L), D.data() + j * nt * L);
          } else {
            for (int64_t i = 0; i < nb; ++i) {
              isa.flat_dot(Gf.data() + j * gsz + i * plan.pstride, P.data() + i * plan.pstride, plan.base.data(), int(nt),
                           plan.flat_len(1, L), D.data() + j * nt * L);
            }
          }
        }
      }
      bool finite = true;
      for (int64_t i = 0; i < g.M * nt; ++i) {
        double sum = 0;
        for (int64_t l = 0; l < L; ++l) sum += D[i * L + l];
        gwp[c * g.M * nt + i] = static_cast<scalar_t>(sum);
        finite = finite && std::isfinite(sum);
      }
      // The dot products multiply the zero columns of Gf by x too: an inf or NaN in x there
      // makes NaN of taps that never meet it. Such a channel is summed again tap by tap over
      // its valid pixels only, as eager's result has it.
      if (!finite) weight_grad_channel_direct(gp, xp, g, c, gwp + c * g.M * nt);
    }
  });
}

// The output columns [lo[kw], hi[kw]) whose tap kw falls inside the input (NhwcWgrad::ow_lo/hi).
void valid_output_columns(const Geom& g, std::vector<int64_t>& lo, std::vector<int64_t>& hi) {
  lo.resize(g.KW);
  hi.resize(g.KW);
  for (int64_t kw = 0; kw < g.KW; ++kw) {
    const int64_t off = kw * g.dw - g.pw;
    lo[kw] = std::clamp<int64_t>(ceil_div(-off, g.sw), 0, g.OW);
    hi[kw] = std::clamp<int64_t>(floor_div(g.W - 1 - off, g.sw) + 1, lo[kw], g.OW);
  }
}

// channels_last, M == 1, in the accumulation type T (grad, x, gwT all T): rows of the flattened
// (image, output row) split into a fixed number of chunks, each summed by nhwc_wgrad.
template <typename T>
void backward_weight_nhwc(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                          at::Tensor& gwT) {
  const Kernels<T>& isa = kernels<T>();
  const int64_t C = g.C, nt = g.taps();
  std::vector<int64_t> lo, hi;
  valid_output_columns(g, lo, hi);
  NhwcWgrad<T> a{grad.const_data_ptr<T>(), x.const_data_ptr<T>(), g.N, C, g.H, g.W, g.OH, g.OW,
                 g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, lo.data(), hi.data()};
  T* gwp = gwT.mutable_data_ptr<T>();  // (C, taps)
  // Rows split into a fixed number of chunks (never depending on the thread count), each summed
  // by one task, then the chunks added in order: deterministic and cache-friendly (a chunk
  // walks whole rows, all channels).
  // Chunk count: a power of two from the work (2 for a 14x14x576 layer, 16 from 4M multiply-
  // adds up), capped so the per-chunk double sums stay within 4 MB.
  const int64_t rows = g.N * g.OH, size = nt * C;
  const int64_t work = rows * g.OW * size;
  int64_t nchunks = 2;
  while (nchunks < 16 && (nchunks << 19) <= work) nchunks *= 2;
  nchunks = std::clamp<int64_t>(std::min<int64_t>(nchunks, (int64_t(1) << 22) / (size * 8)), 1, rows);
  std::vector<double> D(nchunks * size, 0.0);  // per chunk: the (tap, channel) sums
  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> F(size, T(0));
    for (int64_t kc = begin; kc < end; ++kc) {
      isa.nhwc_wgrad(a, kc * rows / nchunks, (kc + 1) * rows / nchunks, F.data(), D.data() + kc * size);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < nt; ++t) {
      double sum = 0;
      for (int64_t kc = 0; kc < nchunks; ++kc) sum += D[kc * size + t * C + c];
      gwp[c * nt + t] = static_cast<T>(sum);
    }
  }
}

// Weight gradient in channel blocks: one task per block of L channels walks the images in order
// (so the sums do not depend on the thread count), gathering x and the gradient into pixel
// vectors and summing them with the channels_last weight-gradient kernel.
template <typename scalar_t>
void backward_weight_nchw_blocked(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                                  at::Tensor& gw) {
  using T = at::opmath_type<scalar_t>;
  const Kernels<T>& isa = kernels<T>();
  const int64_t L = isa.lanes, nt = g.taps(), HW = g.H * g.W, OHW = g.OH * g.OW;
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
  std::vector<int64_t> lo, hi, xidx(HW), gidx(OHW);
  valid_output_columns(g, lo, hi);
  for (int64_t p = 0; p < HW; ++p) xidx[p] = p;
  for (int64_t p = 0; p < OHW; ++p) gidx[p] = p;
  const int64_t nblk = ceil_div(g.C, L);
  at::parallel_for(0, nblk, grain_for(g.N * OHW * L * nt), [&](int64_t begin, int64_t end) {
    AlignedBuf<T> X(HW * L), G(OHW * L);
    std::vector<T> F(nt * L, T(0));
    std::vector<double> D(nt * L);
    const NhwcWgrad<T> a{G.ptr, X.ptr, 1, L, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw,
                         g.dh, g.dw, lo.data(), hi.data()};
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c0 = block_c0(b, g.C, L);
      std::fill(D.begin(), D.end(), 0.0);
      for (int64_t n = 0; n < g.N; ++n) {
        gather_planes(isa, xp + (n * g.C + c0) * HW, HW, HW, xidx.data(), X.ptr);
        gather_planes(isa, gp + (n * g.C + c0) * OHW, OHW, OHW, gidx.data(), G.ptr);
        isa.nhwc_wgrad(a, 0, g.OH, F.data(), D.data());
      }
      // The last block overlaps its neighbour; it writes only its own channels.
      for (int64_t l = b * L - c0; l < L; ++l) {
        for (int64_t t = 0; t < nt; ++t) gwp[(c0 + l) * nt + t] = static_cast<scalar_t>(D[t * L + l]);
      }
    }
  });
}

}  // namespace

void backward_weight_nchw(const at::Tensor& grad, const at::Tensor& x, const Geom& g, at::Tensor& gw) {
  FB_DISPATCH_FLOATING(x.scalar_type(), "depthwise_backward_weight", [&] {
    if (nchw_blocked(g, kernels<at::opmath_type<scalar_t>>().lanes)) {
      backward_weight_nchw_blocked<scalar_t>(grad, x, g, gw);
    } else {
      backward_weight_nchw_phases<scalar_t>(grad, x, g, gw);
    }
  });
}

// The channels_last weight gradient computes in float or double; fp16/bf16 go through float
// copies of grad and x (the forward and input gradient widen row by row instead).
void backward_weight_channels_last(const at::Tensor& grad, const at::Tensor& x, const Geom& g,
                                   at::Tensor& gw) {
  const at::ScalarType ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor gc = grad.to(ct), xc = x.to(ct);
  at::Tensor wc = x.scalar_type() == ct ? gw : at::empty_like(gw, gw.options().dtype(ct));
  if (ct == at::kDouble) {
    backward_weight_nhwc<double>(gc, xc, g, wc);
  } else {
    backward_weight_nhwc<float>(gc, xc, g, wc);
  }
  if (!wc.is_same(gw)) gw.copy_(wc);
}

}  // namespace fastblocks::cpu::dw
