// CPU kernels of the activation family: one pass over the storage of a dense tensor.
//
// The activation is a template parameter and the loops are multi-versioned (cpu_vec.h), so
// each (dtype, activation) pair compiles to a branch-free vectorized loop.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/cpu_vec.h"

namespace fastblocks::cpu {
namespace {

// 32K elements per task: small enough to spread a 1M-element map over all cores, large enough
// that at::parallel_for's per-task overhead stays under ~1%.
constexpr int64_t kGrain = 32768;

// fp16/bf16 are widened to float element by element (c10::Half/BFloat16 conversions); float and
// double loops vectorize directly.
template <typename scalar_t, int ACT>
FB_CPU_CLONES void forward_loop(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<scalar_t>(act_forward_ct<ACT, acc_t>(static_cast<acc_t>(x[i])));
  }
}

// g and gx may alias (the op reuses a relaid-out gradient buffer): no __restrict__ on them.
template <typename scalar_t, int ACT>
FB_CPU_CLONES void backward_loop(const scalar_t* g, const scalar_t* __restrict__ x, scalar_t* gx,
                                 int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    gx[i] = static_cast<scalar_t>(
        act_backward_ct<ACT, acc_t>(static_cast<acc_t>(g[i]), static_cast<acc_t>(x[i])));
  }
}

at::Tensor activation_forward(const at::Tensor& x, int64_t act) {
  check_act(act);
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "activation_forward: x must be dense");
  at::Tensor y = at::empty_like(x);
  FB_DISPATCH_FLOATING(x.scalar_type(), "activation_forward", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    dispatch_act(static_cast<int>(act), [&](auto a) {
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
        forward_loop<scalar_t, decltype(a)::value>(xp + begin, yp + begin, end - begin);
      });
    });
  });
  return y;
}

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& x, int64_t act) {
  check_act(act);
  TORCH_CHECK(x.is_non_overlapping_and_dense() && grad.strides() == x.strides() &&
                  grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "activation_backward: grad and x must be dense with equal sizes, strides, dtype");
  at::Tensor gx = at::empty_like(x);
  FB_DISPATCH_FLOATING(x.scalar_type(), "activation_backward", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    dispatch_act(static_cast<int>(act), [&](auto a) {
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
        backward_loop<scalar_t, decltype(a)::value>(gp + begin, xp + begin, op + begin,
                                                    end - begin);
      });
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("activation_forward", &activation_forward);
  m.impl("activation_backward", &activation_backward);
}

}  // namespace fastblocks::cpu
