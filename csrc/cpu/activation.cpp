// CPU kernels of the activation family: one pass over the storage of a dense tensor.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastblocks/cpu_utils.h"

namespace fastblocks::cpu {
namespace {

// 32K elements per task: small enough to spread a 1M-element map over all cores, large enough
// that at::parallel_for's per-task overhead stays under ~1%.
constexpr int64_t kGrain = 32768;

at::Tensor activation_forward(const at::Tensor& x, int64_t act) {
  check_act(act);
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "activation_forward: x must be dense");
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  FB_DISPATCH_FLOATING(x.scalar_type(), "activation_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int a = static_cast<int>(act);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        yp[i] = static_cast<scalar_t>(act_forward<acc_t>(static_cast<acc_t>(xp[i]), a));
      }
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
  const int64_t n = x.numel();
  FB_DISPATCH_FLOATING(x.scalar_type(), "activation_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = gx.mutable_data_ptr<scalar_t>();
    const int a = static_cast<int>(act);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        op[i] = static_cast<scalar_t>(
            act_backward<acc_t>(static_cast<acc_t>(gp[i]), static_cast<acc_t>(xp[i]), a));
      }
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
