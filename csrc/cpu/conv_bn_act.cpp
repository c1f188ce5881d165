// CPU kernels of the conv_bn_act family's training path: BatchNorm with batch statistics plus
// the activation, fused around ATen's convolution (which produces z and takes the gradient).
//
// bn_act_train_forward(z, weight, bias, eps, act, channels_last) -> (y, mean, invstd)
//   One pass over z for the per-channel statistics, one pass writing y = act(z * a + b) with
//   a = invstd * weight, b = bias - mean * a (ATen's batch norm arithmetic, then the
//   activation in registers: eager's BN output is never stored).
// bn_act_train_backward(grad, z, weight, bias, mean, invstd, act, channels_last, mask)
//   -> (grad_z, grad_weight, grad_bias): recomputes the BN output from z in registers (the
//   memory saving: only z is kept for backward), applies the activation's derivative, and
//   reduces and applies BatchNorm's backward in two passes, with no intermediate map.
//
// Statistics: accumulated in double from a per-channel shift (the channel's first value), so
// the one-pass sum / sum-of-squares stays accurate for large means (no cancellation in
// E[x^2] - E[x]^2). weight/bias/mean/invstd are float32 (float64 for float64 z). Partial sums
// go to fixed blocks of rows reduced in order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastblocks/bn_act_args.h"
#include "fastblocks/cpu_utils.h"
#include "fastblocks/cpu_vec.h"

namespace fastblocks::cpu {
namespace {

constexpr int64_t kRowBlock = 256;  // NHWC rows per partial-sum block

// The layout of a 4-d map viewed as (N, C, HW): element (n, c, i) is at
// n * sn + c * sc + i * si.
struct Layout {
  int64_t n, c, hw, sn, sc, si;
};

Layout layout_of(const at::Tensor& t, bool channels_last) {
  const int64_t n = t.size(0), c = t.size(1), hw = t.size(2) * t.size(3);
  return channels_last ? Layout{n, c, hw, hw * c, 1, c} : Layout{n, c, hw, c * hw, hw, 1};
}

// Per-channel sums of f(c, offset) -> (a, b), in double, deterministic.
template <typename F>
void channel_sums(const Layout& L, bool channels_last, std::vector<double>& s1,
                  std::vector<double>& s2, F&& f) {
  s1.assign(L.c, 0.0);
  s2.assign(L.c, 0.0);
  if (!channels_last) {
    at::parallel_for(0, L.c, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double a = 0.0, b = 0.0;
        for (int64_t n = 0; n < L.n; ++n) {
          const int64_t base = n * L.sn + c * L.sc;
          for (int64_t i = 0; i < L.hw; ++i) {
            auto [x, y] = f(c, base + i);
            a += x;
            b += y;
          }
        }
        s1[c] = a;
        s2[c] = b;
      }
    });
    return;
  }
  const int64_t rows = L.n * L.hw, blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<double> p1(blocks * L.c, 0.0), p2(blocks * L.c, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* a = p1.data() + blk * L.c;
      double* b = p2.data() + blk * L.c;
      const int64_t r1 = std::min(rows, (blk + 1) * kRowBlock);
      for (int64_t r = blk * kRowBlock; r < r1; ++r) {
        for (int64_t c = 0; c < L.c; ++c) {
          auto [x, y] = f(c, r * L.c + c);
          a[c] += x;
          b[c] += y;
        }
      }
    }
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int64_t c = 0; c < L.c; ++c) {
      s1[c] += p1[blk * L.c + c];
      s2[c] += p2[blk * L.c + c];
    }
  }
}

// Calls f(c, offset) for every element, in parallel.
template <typename F>
void for_each(const Layout& L, bool channels_last, F&& f) {
  if (!channels_last) {
    at::parallel_for(0, L.n * L.c, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % L.c, base = (p / L.c) * L.sn + c * L.sc;
        for (int64_t i = 0; i < L.hw; ++i) f(c, base + i);
      }
    });
  } else {
    at::parallel_for(0, L.n * L.hw, kRowBlock, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < L.c; ++c) f(c, r * L.c + c);
    });
  }
}

using bn_act::check_args;

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_forward(
    const at::Tensor& z, const at::Tensor& weight, const at::Tensor& bias, double eps,
    int64_t act, bool channels_last) {
  check_act(act);
  check_args(z, weight, bias, channels_last);
  const Layout L = layout_of(z, channels_last);
  TORCH_CHECK(L.n * L.hw > 1, "bn_act_train_forward: more than 1 value per channel needed");
  at::Tensor y = at::empty_like(z);
  at::Tensor mean = at::empty({L.c}, weight.options());
  at::Tensor invstd = at::empty({L.c}, weight.options());
  FB_DISPATCH_FLOATING(z.scalar_type(), "bn_act_train_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    std::vector<double> shift(L.c), s1, s2;
    for (int64_t c = 0; c < L.c; ++c) shift[c] = widen<double>(zp[c * L.sc]);
    channel_sums(L, channels_last, s1, s2, [&](int64_t c, int64_t o) {
      const double d = widen<double>(zp[o]) - shift[c];
      return std::pair<double, double>(d, d * d);
    });
    const double count = double(L.n * L.hw);
    std::vector<acc_t> alpha(L.c), beta(L.c);
    acc_t* mp = mean.mutable_data_ptr<acc_t>();
    acc_t* ip = invstd.mutable_data_ptr<acc_t>();
    const acc_t* wp = weight.const_data_ptr<acc_t>();
    const acc_t* bp = bias.const_data_ptr<acc_t>();
    for (int64_t c = 0; c < L.c; ++c) {
      const double m1 = s1[c] / count;
      const double var = std::max(s2[c] / count - m1 * m1, 0.0);
      mp[c] = static_cast<acc_t>(shift[c] + m1);
      ip[c] = static_cast<acc_t>(1.0 / std::sqrt(var + eps));
      alpha[c] = ip[c] * wp[c];
      beta[c] = bp[c] - mp[c] * alpha[c];
    }
    dispatch_act(static_cast<int>(act), [&](auto a) {
      constexpr int ACT = decltype(a)::value;
      for_each(L, channels_last, [&](int64_t c, int64_t o) {
        const acc_t bn = widen<acc_t>(zp[o]) * alpha[c] + beta[c];
        // eager rounds BN's output to z's dtype before the activation reads it
        yp[o] = narrow<scalar_t>(act_forward_ct<ACT, acc_t>(widen<acc_t>(narrow<scalar_t>(bn))));
      });
    });
  });
  return {y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_train_backward(
    const at::Tensor& grad_in, const at::Tensor& z, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd, int64_t act,
    bool channels_last, std::array<bool, 3> mask) {
  check_act(act);
  check_args(z, weight, bias, channels_last);
  TORCH_CHECK(grad_in.sizes() == z.sizes() && grad_in.scalar_type() == z.scalar_type(),
              "bn_act_train_backward: grad must have z's shape and dtype");
  const at::Tensor grad = grad_in.contiguous(bn_act::mem_format(channels_last));
  const Layout L = layout_of(z, channels_last);
  at::Tensor gz = mask[0] ? at::empty_like(z) : at::empty({0}, z.options());
  at::Tensor gw = at::empty({L.c}, weight.options());
  at::Tensor gb = at::empty({L.c}, weight.options());
  FB_DISPATCH_FLOATING(z.scalar_type(), "bn_act_train_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const acc_t* wp = weight.const_data_ptr<acc_t>();
    const acc_t* bp = bias.const_data_ptr<acc_t>();
    const acc_t* mp = mean.const_data_ptr<acc_t>();
    const acc_t* ip = invstd.const_data_ptr<acc_t>();
    std::vector<acc_t> alpha(L.c), beta(L.c);
    for (int64_t c = 0; c < L.c; ++c) {
      alpha[c] = ip[c] * wp[c];
      beta[c] = bp[c] - mp[c] * alpha[c];
    }
    dispatch_act(static_cast<int>(act), [&](auto a) {
      constexpr int ACT = decltype(a)::value;
      // the gradient w.r.t. BN's output, at the BN output eager stores (rounded to z's
      // dtype) but itself kept in acc_t: eager rounds it to fp16/bf16 before BN's backward
      // sums it, and rounded here the bn_bias gradient of an fp16 1x3x9x9 -> 8 silu chain
      // came out 0.0066 from float64 against eager's 0.0022 (`fastblocks verify --op
      // conv_bn_act --dtype float16`), past the 2x parity rule
      auto g_bn = [&](int64_t c, int64_t o) -> acc_t {
        const acc_t g = widen<acc_t>(gp[o]);
        if constexpr (ACT == 0) {
          return g;
        } else {
          const acc_t bn = widen<acc_t>(narrow<scalar_t>(widen<acc_t>(zp[o]) * alpha[c] + beta[c]));
          return act_backward_ct<ACT, acc_t>(g, bn);
        }
      };
      std::vector<double> sum_g, dot;
      channel_sums(L, channels_last, sum_g, dot, [&](int64_t c, int64_t o) {
        const double g = g_bn(c, o);
        return std::pair<double, double>(g, g * (widen<double>(zp[o]) - double(mp[c])));
      });
      acc_t* gwp = gw.mutable_data_ptr<acc_t>();
      acc_t* gbp = gb.mutable_data_ptr<acc_t>();
      const double count = double(L.n * L.hw);
      std::vector<acc_t> k(L.c), gmean(L.c), scale(L.c);
      for (int64_t c = 0; c < L.c; ++c) {
        gwp[c] = static_cast<acc_t>(dot[c] * double(ip[c]));
        gbp[c] = static_cast<acc_t>(sum_g[c]);
        // ATen's training backward: dx = (dy - sum/N - (x - mean) * dot * invstd^2 / N)
        //                                 * invstd * weight
        k[c] = static_cast<acc_t>(dot[c] * double(ip[c]) * double(ip[c]) / count);
        gmean[c] = static_cast<acc_t>(sum_g[c] / count);
        scale[c] = ip[c] * wp[c];
      }
      if (mask[0]) {
        scalar_t* op = gz.mutable_data_ptr<scalar_t>();
        for_each(L, channels_last, [&](int64_t c, int64_t o) {
          const acc_t dx = (widen<acc_t>(zp[o]) - mp[c]) * k[c];
          op[o] = narrow<scalar_t>((g_bn(c, o) - gmean[c] - dx) * scale[c]);
        });
      }
    });
  });
  return {gz, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("bn_act_train_forward", &bn_act_train_forward);
  m.impl("bn_act_train_backward", &bn_act_train_backward);
}

}  // namespace fastblocks::cpu
