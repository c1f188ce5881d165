// Depthwise kernels without scratch memory: the CPU path of geometries whose fast kernels
// (csrc/cpu/depthwise.cpp) would need scratch far larger than the tensors. A 5x5 input with a
// 3x3 kernel at stride 16384 made the phase-split NCHW forward allocate 2.4 GB, and stride 2^31
// looped for ever (issue 12); these kernels only visit outputs and the taps that land inside the
// input, so memory is the tensors' and time O(outputs x taps + inputs).
//
// Scalar loops, accumulation in float (double for fp64; double for every weight-gradient sum),
// each output element produced by one task in a fixed order, as in the fast kernels.
#include "fastblocks/depthwise_direct.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "fastblocks/common.h"
#include "fastblocks/cpu_utils.h"

namespace fastblocks::cpu::direct {
namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Along one axis: the j in [lo, hi) with 0 <= base + j * step < n, j < count. Serves both
// "taps of output o" (base = o*stride - pad, step = dilation) and "outputs of tap k" (base =
// k*dilation - pad, step = stride). |base| < 2^62 (depthwise_args.h), so nothing overflows.
struct Range {
  int64_t lo, hi;
};
Range in_bounds(int64_t base, int64_t step, int64_t count, int64_t n) {
  const int64_t lo = std::max<int64_t>(0, ceil_div(-base, step));
  const int64_t hi = std::min<int64_t>(count, floor_div(n - 1 - base, step) + 1);
  return {lo, std::max(lo, hi)};
}

// Work (multiply-adds) below which a task is not worth its own thread, as in depthwise.cpp.
int64_t grain(int64_t work_per_task) { return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, work_per_task)); }

template <typename scalar_t>
void forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                  const DepthwiseShape& s, int act, at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const auto xs = x.strides(), ys = y.strides();
  const int64_t OC = s.out_channels(), kk = s.kh * s.kw;
  at::parallel_for(0, s.n * OC, grain(s.oh * s.ow * kk), [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / OC, oc = nc % OC;
      const scalar_t* xq = xp + n * xs[0] + (oc / s.mult) * xs[1];
      const scalar_t* wq = wp + oc * kk;
      scalar_t* yq = yp + n * ys[0] + oc * ys[1];
      const acc_t b = bp ? widen<acc_t>(bp[oc]) : acc_t(0);
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        const int64_t bh = oh * s.stride_h - s.pad_h;
        const Range rh = in_bounds(bh, s.dil_h, s.kh, s.h);
        for (int64_t ow = 0; ow < s.ow; ++ow) {
          const int64_t bw = ow * s.stride_w - s.pad_w;
          const Range rw = in_bounds(bw, s.dil_w, s.kw, s.w);
          acc_t acc = b;
          for (int64_t i = rh.lo; i < rh.hi; ++i) {
            const scalar_t* xr = xq + (bh + i * s.dil_h) * xs[2];
            for (int64_t j = rw.lo; j < rw.hi; ++j) {
              acc += widen<acc_t>(xr[(bw + j * s.dil_w) * xs[3]]) * widen<acc_t>(wq[i * s.kw + j]);
            }
          }
          yq[oh * ys[2] + ow * ys[3]] = narrow<scalar_t>(act_forward<acc_t>(acc, act));
        }
      }
    }
  });
}

// Scatter per input plane: each output's gradient goes to the input pixels its valid taps
// read, summed in a float (double) copy of the plane that one task owns.
template <typename scalar_t>
void backward_input_impl(const at::Tensor& grad, const at::Tensor& weight, const DepthwiseShape& s,
                         at::Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  scalar_t* op = gx.mutable_data_ptr<scalar_t>();
  const auto gs = grad.strides(), os = gx.strides();
  const int64_t kk = s.kh * s.kw;
  at::parallel_for(0, s.n * s.c, grain(s.mult * s.oh * s.ow * kk + s.h * s.w), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> plane(s.h * s.w);
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / s.c, c = nc % s.c;
      std::fill(plane.begin(), plane.end(), acc_t(0));
      for (int64_t j = 0; j < s.mult; ++j) {
        const int64_t oc = c * s.mult + j;
        const scalar_t* gq = gp + n * gs[0] + oc * gs[1];
        const scalar_t* wq = wp + oc * kk;
        for (int64_t oh = 0; oh < s.oh; ++oh) {
          const int64_t bh = oh * s.stride_h - s.pad_h;
          const Range rh = in_bounds(bh, s.dil_h, s.kh, s.h);
          if (rh.lo == rh.hi) continue;
          for (int64_t ow = 0; ow < s.ow; ++ow) {
            const int64_t bw = ow * s.stride_w - s.pad_w;
            const Range rw = in_bounds(bw, s.dil_w, s.kw, s.w);
            const acc_t g = widen<acc_t>(gq[oh * gs[2] + ow * gs[3]]);
            for (int64_t i = rh.lo; i < rh.hi; ++i) {
              acc_t* row = plane.data() + (bh + i * s.dil_h) * s.w;
              for (int64_t t = rw.lo; t < rw.hi; ++t) {
                row[bw + t * s.dil_w] += g * widen<acc_t>(wq[i * s.kw + t]);
              }
            }
          }
        }
      }
      scalar_t* oq = op + n * os[0] + c * os[1];
      for (int64_t ih = 0; ih < s.h; ++ih) {
        for (int64_t iw = 0; iw < s.w; ++iw) oq[ih * os[2] + iw * os[3]] = narrow<scalar_t>(plane[ih * s.w + iw]);
      }
    }
  });
}

// One task per output channel: each tap sums, in double, over exactly the (output, input)
// pixel pairs it joins.
template <typename scalar_t>
void backward_weight_impl(const at::Tensor& grad, const at::Tensor& x, const DepthwiseShape& s,
                          at::Tensor& gw) {
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* op = gw.mutable_data_ptr<scalar_t>();
  const auto gs = grad.strides(), xs = x.strides();
  const int64_t OC = s.out_channels(), kk = s.kh * s.kw;
  at::parallel_for(0, OC, grain(s.n * s.oh * s.ow * kk), [&](int64_t begin, int64_t end) {
    for (int64_t oc = begin; oc < end; ++oc) {
      for (int64_t i = 0; i < s.kh; ++i) {
        const Range ro = in_bounds(i * s.dil_h - s.pad_h, s.stride_h, s.oh, s.h);
        for (int64_t t = 0; t < s.kw; ++t) {
          const Range rw = in_bounds(t * s.dil_w - s.pad_w, s.stride_w, s.ow, s.w);
          double sum = 0;
          for (int64_t n = 0; n < s.n; ++n) {
            const scalar_t* gq = gp + n * gs[0] + oc * gs[1];
            const scalar_t* xq = xp + n * xs[0] + (oc / s.mult) * xs[1];
            for (int64_t oh = ro.lo; oh < ro.hi; ++oh) {
              const scalar_t* xr = xq + (oh * s.stride_h - s.pad_h + i * s.dil_h) * xs[2];
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) {
                sum += widen<double>(gq[oh * gs[2] + ow * gs[3]]) *
                       widen<double>(xr[(ow * s.stride_w - s.pad_w + t * s.dil_w) * xs[3]]);
              }
            }
          }
          op[oc * kk + i * s.kw + t] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

// The extent of the input region one output plane reads along an axis, plus a stride: what
// the fast kernels' per-plane scratch spans (in double: the product may pass 2^63).
double extent(int64_t out, int64_t stride, int64_t k, int64_t dil) {
  return double(std::max<int64_t>(out - 1, 0)) * double(stride) + double(k - 1) * double(dil) + 1.0 + double(stride);
}

}  // namespace

bool preferred(const DepthwiseShape& s) {
  // FASTBLOCKS_CPU_DEPTHWISE_DIRECT=1 sends every geometry here (tests fuzz these kernels on
  // ordinary shapes, dtypes and layouts with it), read once per process.
  static const bool forced = [] {
    const char* v = std::getenv("FASTBLOCKS_CPU_DEPTHWISE_DIRECT");
    return v != nullptr && std::string(v) == "1";
  }();
  if (forced) return true;
  const double scratch = extent(s.oh, s.stride_h, s.kh, s.dil_h) * extent(s.ow, s.stride_w, s.kw, s.dil_w);
  const double budget = 16.0 * (double(s.h) * double(s.w) + double(s.oh) * double(s.ow)) + 65536.0;
  return scratch > budget;
}

void forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
             const DepthwiseShape& s, int act, at::Tensor& y) {
  FB_DISPATCH_FLOATING(x.scalar_type(), "depthwise_forward", [&] { forward_impl<scalar_t>(x, weight, bias, s, act, y); });
}

void backward_input(const at::Tensor& grad, const at::Tensor& weight, const DepthwiseShape& s,
                    at::Tensor& gx) {
  FB_DISPATCH_FLOATING(grad.scalar_type(), "depthwise_backward_input",
                       [&] { backward_input_impl<scalar_t>(grad, weight, s, gx); });
}

void backward_weight(const at::Tensor& grad, const at::Tensor& x, const DepthwiseShape& s,
                     at::Tensor& gw) {
  FB_DISPATCH_FLOATING(x.scalar_type(), "depthwise_backward_weight",
                       [&] { backward_weight_impl<scalar_t>(grad, x, s, gw); });
}

}  // namespace fastblocks::cpu::direct
