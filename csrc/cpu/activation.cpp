// CPU kernels of the activation family: one pass over the storage of a dense tensor.
//
// The activation is a template parameter and the loops are multi-versioned (cpu_vec.h), so
// each (dtype, activation) pair compiles to a branch-free vectorized loop.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/cpu_vec.h"
#include "fastblocks/layout.h"

namespace fastblocks::cpu {
namespace {

// 32K elements per task: small enough to spread a 1M-element map over all cores, large enough
// that at::parallel_for's per-task overhead stays under ~1%.
constexpr int64_t kGrain = 32768;

// float and double loops vectorize directly. fp16/bf16 run in chunks through a float buffer:
// widen_n, the float loop, narrow_n (cpu_utils.h; bit-identical to c10's conversions). GCC 12
// does not vectorize one loop that converts, computes and converts back (it picks 16-bit
// vectors and then cannot fit the floats), and c10's scalar fp16 conversions made the fp16
// activations ~40x slower than ATen's.
constexpr int64_t kChunk = 512;

template <typename scalar_t, int ACT>
FB_CPU_CLONES void forward_loop(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i = 0; i < n; ++i) y[i] = act_forward_ct<ACT, acc_t>(x[i]);
  } else {
    alignas(64) acc_t buf[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(x + i0, buf, m);
      for (int64_t i = 0; i < m; ++i) buf[i] = act_forward_ct<ACT, acc_t>(buf[i]);
      narrow_n(buf, y + i0, m);
    }
  }
}

// g and gx may alias (the op reuses a relaid-out gradient buffer): no __restrict__ on them.
template <typename scalar_t, int ACT>
FB_CPU_CLONES void backward_loop(const scalar_t* g, const scalar_t* __restrict__ x, scalar_t* gx,
                                 int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) gx[i] = act_backward_ct<ACT, acc_t>(g[i], x[i]);
  } else {
    alignas(64) acc_t gb[kChunk], xb[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(g + i0, gb, m);
      widen_n(x + i0, xb, m);
      for (int64_t i = 0; i < m; ++i) gb[i] = act_backward_ct<ACT, acc_t>(gb[i], xb[i]);
      narrow_n(gb, gx + i0, m);  // gx may be g: chunk i0 of g was read above
    }
  }
}

// Any strides: a dense x is read in place over its storage, anything else copied once
// (fastblocks/layout.h); the output has the dense x's strides.
at::Tensor activation_forward(const at::Tensor& x_in, int64_t act) {
  check_act(act);
  const at::Tensor x = dense(x_in);
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

// grad in any layout: used in place when it places its elements as the dense x does (strides of
// size-1 dimensions, empty tensors), else copied once into x's layout (an expanded gradient).
at::Tensor activation_backward(const at::Tensor& grad_in, const at::Tensor& x_in, int64_t act) {
  check_act(act);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "activation_backward: grad has shape ",
              grad_in.sizes(), " but x has ", x_in.sizes());
  TORCH_CHECK(grad_in.scalar_type() == x_in.scalar_type(), "activation_backward: grad dtype ",
              grad_in.scalar_type(), " differs from the x dtype ", x_in.scalar_type());
  const at::Tensor x = dense(x_in);
  const at::Tensor grad = layout_of(grad_in, x);
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
