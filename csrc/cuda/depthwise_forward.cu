// depthwise_forward: y = act(conv2d(x, w, groups=C) + bias) (launchers.h). The tiled NCHW and
// the NHWC kernels (depthwise_conv.cuh) serve every shape whose coordinates fit int32 and whose
// tile fits in shared memory; this file adds the int64 direct kernel (one thread per output
// element, any size, either layout) for the rest, and the launcher.
#include <cstdint>

#include "depthwise_common.cuh"
#include "depthwise_conv.cuh"

namespace fastblocks::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    direct_forward_kernel(const T* __restrict__ in, const T* __restrict__ w,
                          const T* __restrict__ bias, T* __restrict__ out, const Conv p,
                          const Decompose dec, const int act) {
  using acc_t = typename Acc<T>::type;
  const int64_t total = p.n * p.out_c * p.out_h * p.out_w;
  const int64_t kk = int64_t(p.kh) * p.kw;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Index4 o = dec(idx);
    const int64_t ic = o.c / p.mult;
    acc_t acc = bias != nullptr ? to_acc(bias[o.c]) : acc_t(0);
    for (int i = 0; i < p.kh; ++i) {
      const int64_t iy = o.y * p.sh - p.ph + int64_t(i) * p.dh;
      if (iy < 0 || iy >= p.in_h) continue;
      for (int j = 0; j < p.kw; ++j) {
        const int64_t ix = o.x * p.sw - p.pw + int64_t(j) * p.dw;
        if (ix < 0 || ix >= p.in_w) continue;
        acc += to_acc(in[offset4(o.n, ic, iy, ix, p.in_c, p.in_h, p.in_w, dec.cl)]) *
               to_acc(w[o.c * kk + i * p.kw + j]);
      }
    }
    out[idx] = from_acc<T>(act_forward<acc_t>(acc, act));
  }
}

template <typename T>
void launch_direct_forward(const T* x, const T* w, const T* b, T* y, const Conv& p, bool cl,
                           int act, cudaStream_t stream) {
  const int64_t total = p.n * p.out_c * p.out_h * p.out_w;
  launch(direct_forward_kernel<T>, dim3(grid_stride_blocks(total, kThreads)), dim3(kThreads), 0,
         stream, x, w, b, y, p, make_decompose(p.out_c, p.out_h, p.out_w, cl), act);
}

template <typename T>
cudaError_t forward_impl(const void* xv, const void* wv, const void* bv, void* yv,
                         const DepthwiseShape& s, int act, cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  const T* w = static_cast<const T*>(wv);
  const T* b = static_cast<const T*>(bv);
  T* y = static_cast<T*>(yv);
  const Conv p = forward_conv(s);
  if (!small_coords(s) ||
      !launch_conv<T, false>(x, w, b, y, p, fixed_k(s), fixed_stride(s), s.channels_last, act,
                             stream))
    launch_direct_forward(x, w, b, y, p, s.channels_last, act, stream);
  return cudaGetLastError();
}

}  // namespace

cudaError_t depthwise_forward(const void* x, const void* weight, const void* bias, void* y,
                              const DepthwiseShape& s, int act, DType dtype, cudaStream_t stream) {
  if (!valid_shape(s) || act < 0 || act >= kNumActs) return cudaErrorInvalidValue;
  if (s.n * s.c * s.mult * s.oh * s.ow == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return forward_impl<float>(x, weight, bias, y, s, act, stream);
    case DType::kFloat16: return forward_impl<__half>(x, weight, bias, y, s, act, stream);
    case DType::kBFloat16: return forward_impl<__nv_bfloat16>(x, weight, bias, y, s, act, stream);
    case DType::kFloat64: return forward_impl<double>(x, weight, bias, y, s, act, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
