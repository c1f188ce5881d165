// Layouts PyTorch considers equivalent, for the kernels' entry points (CPU and CUDA bindings).
// Backward hands the kernels tensors whose strides differ from the forward's only where they
// do not matter: strides of size-1 dimensions (a (N, C, 1, 1) gradient arriving through a
// flatten or a transpose), empty tensors, expanded gradients (stride 0, from y.sum()). Each
// entry point accepts them, or normalises them once with one copy, and never rejects them.
#pragma once
#include <ATen/ATen.h>

namespace fastblocks {

// Whether a and b (of equal sizes) place every element at the same offset: equal strides in
// every dimension of more than one element; any strides at all when they hold no element.
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// t when its elements fill one storage range (any permutation of dimensions), else one copy
// laid out as at::empty_like(t) lays it out (what the Python fake kernels describe).
inline at::Tensor dense(const at::Tensor& t) {
  return t.numel() == 0 || t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t);
}

// t (the sizes of the dense `ref`) with ref's element offsets: t itself when equivalent, else
// one copy into at::empty_like(ref).
inline at::Tensor layout_of(const at::Tensor& t, const at::Tensor& ref) {
  return same_layout(t, ref) ? t : at::empty_like(ref).copy_(t);
}

}  // namespace fastblocks
