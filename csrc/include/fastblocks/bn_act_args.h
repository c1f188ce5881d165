// ATen-side argument checks of the conv_bn_act family's training kernels (csrc/ops.cpp
// schemas bn_act_train_forward/backward), shared by the CPU kernels and the CUDA bindings.
#pragma once
#include <ATen/ATen.h>

namespace fastblocks::bn_act {

inline at::MemoryFormat mem_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The statistics' dtype of z: float64 for float64, else float32.
inline at::ScalarType stat_type(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// z 4-d and contiguous in the format `channels_last` names; the (C,) vectors contiguous, of
// the statistics' dtype, on z's device.
inline void check_vector(const at::Tensor& t, const at::Tensor& z, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == z.size(1) && t.scalar_type() == stat_type(z) &&
                  t.is_contiguous() && t.device() == z.device(),
              "bn_act_train: ", what, " must be a contiguous (C,) vector of the stats dtype on z's device");
}

inline void check_args(const at::Tensor& z, const at::Tensor& weight, const at::Tensor& bias,
                       bool channels_last) {
  TORCH_CHECK(z.dim() == 4, "bn_act_train: z must be 4-d");
  TORCH_CHECK(z.is_contiguous(mem_format(channels_last)),
              "bn_act_train: z must be contiguous in the memory format channels_last names");
  check_vector(weight, z, "weight");
  check_vector(bias, z, "bias");
}

}  // namespace fastblocks::bn_act
