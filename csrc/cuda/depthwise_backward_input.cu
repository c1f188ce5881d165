// depthwise_backward_input: grad_x from grad, the gradient w.r.t. the pre-activation output
// (launchers.h). For stride 1 and multiplier 1 it is a forward conv of grad with the mirrored
// kernel and padding (k-1)*d - p, so it reuses the forward kernels (depthwise_conv.cuh, flipped
// mode). Other strides and multipliers, and shapes the forward kernels decline, use a gather:
// one thread per input element, only the taps that land, the m outputs summed.
#include <cstdint>

#include "depthwise_common.cuh"
#include "depthwise_conv.cuh"

namespace fastblocks::cuda {
namespace {

// grad_x[iy] = sum_i grad[(iy + ph - i*dh) / sh] * w[i]; for sh == 1, substituting
// i = kh-1-i' gives sum_i' grad[iy - ((kh-1)*dh - ph) + i'*dh] * w[kh-1-i']: a forward conv of
// grad (stride 1, same dilation) with padding (kh-1)*dh - ph and the kernel mirrored.
// Only for mult == 1 (with m > 1 each grad_x channel would sum m flipped convs: gather instead).
Conv flipped_conv(const DepthwiseShape& s) {
  return Conv{s.n,
              s.c,
              s.oh,
              s.ow,
              s.c,
              s.h,
              s.w,
              int(s.kh),
              int(s.kw),
              1,
              1,
              int((s.kh - 1) * s.dil_h - s.pad_h),
              int((s.kw - 1) * s.dil_w - s.pad_w),
              int(s.dil_h),
              int(s.dil_w),
              1};
}

// Input gradient by gather, for strides > 1 (and as the int64 fallback): grad_x element
// (n, c, iy, ix) sums grad[n, c*mult+k, oy, ox] * w[c*mult+k, i, j] over the taps with
// iy + ph - i*dh = oy*sh (0 <= oy < OH), likewise for columns. S = 2: stride 2 in both dims,
// parity tests instead of divisions; S = 0: runtime strides. `p` is the forward Conv.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads)
    gather_backward_input_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                                 T* __restrict__ gx, const Conv p, const Decompose dec) {
  using acc_t = typename Acc<T>::type;
  const int64_t total = p.n * p.in_c * p.in_h * p.in_w;
  const int64_t kk = int64_t(p.kh) * p.kw;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Index4 o = dec(idx);  // over grad_x: (n, c, iy, ix)
    acc_t acc = acc_t(0);
    for (int i = 0; i < p.kh; ++i) {
      const int64_t ty = o.y + p.ph - int64_t(i) * p.dh;  // decreases with i
      if (ty < 0) break;
      int64_t oy;
      if constexpr (S == 2) {
        if (ty & 1) continue;
        oy = ty >> 1;
      } else {
        oy = ty / p.sh;
        if (oy * p.sh != ty) continue;
      }
      if (oy >= p.out_h) continue;
      for (int j = 0; j < p.kw; ++j) {
        const int64_t tx = o.x + p.pw - int64_t(j) * p.dw;
        if (tx < 0) break;
        int64_t ox;
        if constexpr (S == 2) {
          if (tx & 1) continue;
          ox = tx >> 1;
        } else {
          ox = tx / p.sw;
          if (ox * p.sw != tx) continue;
        }
        if (ox >= p.out_w) continue;
        for (int k = 0; k < p.mult; ++k) {
          const int64_t oc = o.c * p.mult + k;
          acc += to_acc(grad[offset4(o.n, oc, oy, ox, p.out_c, p.out_h, p.out_w, dec.cl)]) *
                 to_acc(w[oc * kk + i * p.kw + j]);
        }
      }
    }
    gx[idx] = from_acc<T>(acc);
  }
}

template <typename T>
cudaError_t backward_input_impl(const void* gv, const void* wv, void* gxv,
                                const DepthwiseShape& s, cudaStream_t stream) {
  const T* g = static_cast<const T*>(gv);
  const T* w = static_cast<const T*>(wv);
  T* gx = static_cast<T*>(gxv);
  if (s.stride_h == 1 && s.stride_w == 1 && s.mult == 1 && small_coords(s) &&
      launch_conv<T, true>(g, w, nullptr, gx, flipped_conv(s), fixed_k(s), 1, s.channels_last,
                           0, stream))
    return cudaGetLastError();
  const Conv p = forward_conv(s);
  const Decompose dec = make_decompose(s.c, s.h, s.w, s.channels_last);
  const dim3 grid(grid_stride_blocks(s.n * s.c * s.h * s.w, kThreads));
  if (s.stride_h == 2 && s.stride_w == 2)
    launch(gather_backward_input_kernel<T, 2>, grid, dim3(kThreads), 0, stream, g, w, gx, p, dec);
  else
    launch(gather_backward_input_kernel<T, 0>, grid, dim3(kThreads), 0, stream, g, w, gx, p, dec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t depthwise_backward_input(const void* grad, const void* weight, void* grad_x,
                                     const DepthwiseShape& s, DType dtype, cudaStream_t stream) {
  if (!valid_shape(s)) return cudaErrorInvalidValue;
  if (s.n * s.c * s.h * s.w == 0) return cudaSuccess;  // grad empty, grad_x not: zeros
  switch (dtype) {
    case DType::kFloat32: return backward_input_impl<float>(grad, weight, grad_x, s, stream);
    case DType::kFloat16: return backward_input_impl<__half>(grad, weight, grad_x, s, stream);
    case DType::kBFloat16:
      return backward_input_impl<__nv_bfloat16>(grad, weight, grad_x, s, stream);
    case DType::kFloat64: return backward_input_impl<double>(grad, weight, grad_x, s, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastblocks::cuda
