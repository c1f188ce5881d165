// The phase-split scratch of the NCHW forward and weight gradient (csrc/cpu/depthwise_forward.cpp
// says why): where each input row lands in it (RowCopy), where each tap's run starts, and how
// many images share one task; and kStackElems, the scratch budget the input gradient's
// gradient slots stack under too.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/depthwise_cpu_passes.h"
#include "fastblocks/depthwise_cpu_simd.h"

namespace fastblocks::cpu::dw {

// Scratch geometry of the forward and weight-gradient passes. Planes of one channel for several
// images sit at a fixed stride in the scratch; the 1-d tap sum then runs over all of them at
// once (small planes, e.g. 7x7, would otherwise pay per-plane overhead many times over).
struct PhasePlan {
  int64_t PW, nflat, pstride;  // scratch row width, outputs per plane (OH x PW), plane stride
  int64_t NB;                 // images per task
  bool joint;                 // one 1-d sum across the stacked planes (gaps between them small)
  std::vector<int64_t> base;  // per tap (kh, kw)
  std::vector<RowCopy> rows;  // what fill_phases copies from each plane
  int64_t flat_len(int64_t nb, int64_t lanes) const { return round_up((nb - 1) * pstride + nflat, lanes); }
  // base[t] + flat_len(nb) never passes NB * pstride + PW + lanes; outputs stay below NB * pstride.
  int64_t scratch_size(int64_t lanes) const { return NB * pstride + PW + lanes; }
};

// Stack images while the scratch stays within ~64 KB (L2-resident).
constexpr int64_t kStackElems = 16384;

inline PhasePlan phase_plan(const Geom& g, int64_t lanes) {
  PhasePlan plan;
  const int64_t qh_max = ((g.KH - 1) * g.dh) / g.sh, qw_max = ((g.KW - 1) * g.dw) / g.sw;
  const int64_t A = g.OH + qh_max, PW = g.OW + qw_max;
  plan.PW = PW;
  plan.nflat = g.OH * PW;
  // Plane stride: a whole number of vectors past the phase planes, so a plane's output run
  // rounded up to whole vectors stays inside its own (zero-padded) slot.
  plan.pstride = round_up(g.sh * g.sw * A * PW, lanes) + lanes;
  plan.NB = std::clamp<int64_t>(kStackElems / std::max<int64_t>(plan.pstride, 1), 1, std::max<int64_t>(g.N, 1));
  // Summing across the gaps between stacked planes is wasted work: worth one call only while the
  // gaps stay under a quarter of the outputs (stride 1); stride-2 phase planes are 4x larger
  // than their outputs and go plane by plane.
  plan.joint = 4 * (plan.pstride - plan.nflat) <= plan.nflat;
  plan.base.resize(g.taps());
  for (int64_t kh = 0; kh < g.KH; ++kh) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t b = (kh * g.dh) % g.sh, qh = (kh * g.dh) / g.sh;
      const int64_t p = (kw * g.dw) % g.sw, qw = (kw * g.dw) / g.sw;
      plan.base[kh * g.KW + kw] = ((b * g.sw + p) * A + qh) * PW + qw;
    }
  }
  for (int64_t b = 0; b < g.sh; ++b) {
    for (int64_t a = 0; a < A; ++a) {
      const int64_t ih = a * g.sh + b - g.ph;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t p = 0; p < g.sw; ++p) {
        const int64_t jlo = std::clamp<int64_t>(ceil_div(g.pw - p, g.sw), 0, PW);
        const int64_t jhi = std::clamp<int64_t>(floor_div(g.W - 1 + g.pw - p, g.sw) + 1, jlo, PW);
        if (jhi > jlo) {
          plan.rows.push_back({ih * g.W + jlo * g.sw + p - g.pw, ((b * g.sw + p) * A + a) * PW + jlo, jhi - jlo});
        }
      }
    }
  }
  return plan;
}

}  // namespace fastblocks::cpu::dw
