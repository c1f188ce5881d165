// CPU kernels of the shuffle family: channel shuffle (ShuffleNet), optionally of the
// concatenation of two tensors, with a fused bias + activation epilogue, and its backward.
//
// Forward:  y[:, o] = act(cat(a, b)[:, src(o)] + bias[src(o)]),  src(o) = (o % g) * k + o / g,
//           k = C / g (torch.nn.ChannelShuffle's order: view (g, k), transpose, flatten).
// Backward: the inverse permutation, dst(c) = (c % k) * g + c / k, through act' read from the
//           saved output (relu and relu6 only, whose derivative the output gives exactly),
//           split back into the gradients of a (channels [0, split)) and b (the rest).
//
// NCHW moves whole planes (a memcpy when there is no epilogue, as ATen's channel_shuffle);
// NHWC gathers each pixel's channel row through a permutation table. Both are memory-bound:
// one read and one write per element.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/cpu_vec.h"
#include "fastblocks/shuffle_args.h"

namespace fastblocks::cpu {
namespace {

// Elements per parallel task, as activation.cpp: ~1% task overhead, all cores busy on 1M elements.
constexpr int64_t kGrain = 32768;
// fp16/bf16 epilogues run through a float buffer of this many elements (see activation.cpp).
constexpr int64_t kChunk = 512;

// One or two tensors seen as a single channel axis: channels [0, split) live in p0, the rest
// in p1. Each may be a channel slice of a larger tensor (x.chunk(2, dim=1) in ShuffleNet v2):
// NCHW planes are contiguous with batch strides sn0/sn1; NHWC pixels are rows of channels
// with pixel strides sp0/sp1 (the batch stride is hw * sp).
template <typename T>
struct Channels {
  T* p0;
  T* p1;
  const ShuffleShape& s;
  // start of channel c's plane in image n (NCHW)
  T* plane(int64_t n, int64_t c) const {
    return c < s.split ? p0 + n * s.sn0 + c * s.hw : p1 + n * s.sn1 + (c - s.split) * s.hw;
  }
  // channel rows of pixel q = n * hw + p (NHWC)
  T* row0(int64_t q) const { return p0 + q * s.sp0; }
  T* row1(int64_t q) const { return p1 == nullptr ? nullptr : p1 + q * s.sp1; }
};

// out[i] = act(in[i] + bias) over n contiguous elements; in == out allowed.
template <typename scalar_t, int ACT, bool BIAS>
FB_CPU_CLONES void plane_epilogue(const scalar_t* in, scalar_t* out, int64_t n,
                                  at::opmath_type<scalar_t> bias) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      acc_t v = in[i];
      if constexpr (BIAS) v += bias;
      out[i] = act_forward_ct<ACT, acc_t>(v);
    }
  } else {
    alignas(64) acc_t buf[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(in + i0, buf, m);
      for (int64_t i = 0; i < m; ++i) {
        acc_t v = buf[i];
        if constexpr (BIAS) v += bias;
        buf[i] = act_forward_ct<ACT, acc_t>(v);
      }
      narrow_n(buf, out + i0, m);
    }
  }
}

// row[i] = act(row[i] + bias[i]) in place over a pixel's n channels (NHWC epilogue).
template <typename scalar_t, int ACT, bool BIAS>
FB_CPU_CLONES void row_epilogue(scalar_t* row, const at::opmath_type<scalar_t>* __restrict__ bias,
                                int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i = 0; i < n; ++i) {
      acc_t v = row[i];
      if constexpr (BIAS) v += bias[i];
      row[i] = act_forward_ct<ACT, acc_t>(v);
    }
  } else {
    alignas(64) acc_t buf[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(row + i0, buf, m);
      for (int64_t i = 0; i < m; ++i) {
        acc_t v = buf[i];
        if constexpr (BIAS) v += bias[i0 + i];
        buf[i] = act_forward_ct<ACT, acc_t>(v);
      }
      narrow_n(buf, row + i0, m);
    }
  }
}

// gx[i] = act'(from y[i]) * g[i]; gx may alias g (the NHWC path gathers into one buffer).
template <typename scalar_t, int ACT>
FB_CPU_CLONES void grad_epilogue(const scalar_t* g, const scalar_t* __restrict__ y, scalar_t* gx,
                                 int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) gx[i] = act_backward_ct<ACT, acc_t>(g[i], y[i]);
  } else {
    alignas(64) acc_t gb[kChunk], yb[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(g + i0, gb, m);
      widen_n(y + i0, yb, m);
      for (int64_t i = 0; i < m; ++i) gb[i] = act_backward_ct<ACT, acc_t>(gb[i], yb[i]);
      narrow_n(gb, gx + i0, m);
    }
  }
}

// Runs i in [begin, end) of hw elements: dst_of(i)[j] = src_of(i)[j], copied by an inlined
// loop. A batch-32/256 NCHW shuffle of 7x7-14x14 maps copies 50-60k runs of 196-784 bytes, and
// a memcpy call per run cost ~20 ns each: 0.79-0.92x ATen's inlined vector loop (256x232x14x14
// fp32, 2-core AMD EPYC VM, 1 thread). The optimize attribute keeps GCC from turning the inner
// loop back into a memcpy call.
template <typename B, typename SrcOf, typename DstOf>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void copy_runs(
    SrcOf src_of, DstOf dst_of, int64_t hw, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const B* __restrict__ src = src_of(i);
    B* __restrict__ dst = dst_of(i);
    for (int64_t j = 0; j < hw; ++j) dst[j] = src[j];
  }
}

// Storage-width integer of an element: the permutations move bits, no conversion.
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 2, uint16_t,
                                std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;

// out[o] = (table[o] < split ? r0[table[o]] : r1[table[o] - split]) for o < c: one pixel's row.
template <typename B>
FB_CPU_CLONES void gather_row(const B* __restrict__ r0, const B* __restrict__ r1, int64_t split,
                              const int64_t* __restrict__ table, B* __restrict__ out, int64_t c) {
  if (r1 == nullptr) {
    for (int64_t o = 0; o < c; ++o) out[o] = r0[table[o]];
  } else {
    for (int64_t o = 0; o < c; ++o) {
      const int64_t s = table[o];
      out[o] = s < split ? r0[s] : r1[s - split];
    }
  }
}

// out[i * G + j] = rows[j][i] for i < k, j < G: one NHWC pixel's shuffle when every group of
// k source channels lies in one tensor (always for one tensor; for concat when split % k == 0,
// as in ShuffleNet v2). With G fixed, GCC vectorizes the interleaving stores, which the
// table gather cannot (measured on the 2-core dev VM, 32x384x7x7 fp32 g=8 channels_last:
// the table gather ran at 0.35x ATen's channel_shuffle).
template <typename B, int G>
FB_CPU_CLONES void interleave_fixed(const B* const* rows, B* __restrict__ out, int64_t k) {
  const B* __restrict__ r[G];
  for (int j = 0; j < G; ++j) r[j] = rows[j];
  for (int64_t i = 0; i < k; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) out[i * G + j] = r[j][i];
  }
}

template <typename B>
void interleave_rows(const B* const* rows, B* __restrict__ out, int64_t g, int64_t k) {
  switch (g) {
    case 2: return interleave_fixed<B, 2>(rows, out, k);
    case 3: return interleave_fixed<B, 3>(rows, out, k);
    case 4: return interleave_fixed<B, 4>(rows, out, k);
    case 8: return interleave_fixed<B, 8>(rows, out, k);
    default:
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < g; ++j) out[i * g + j] = rows[j][i];
  }
}

// out[j * k + i] = in[i * G + j] for i < k, j < G: one NHWC pixel's inverse shuffle (the
// backward of a shuffle in G groups of k), the mirror of interleave_fixed. The table gather
// it replaces ran channel_shuffle's training step at 0.81x eager on a batch-1 ShuffleNet v1
// g=8 tensor (1x96x28x28 channels_last, 2-core AMD EPYC VM, 1 thread, paired medians).
template <typename B, int G>
FB_CPU_CLONES void deinterleave_fixed(const B* __restrict__ in, B* __restrict__ out, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) out[j * k + i] = in[i * G + j];
  }
}

// The inverse shuffle of one pixel's c = g * k channels; table: permutation(c, g, true).
template <typename B>
void deinterleave_row(const B* __restrict__ in, B* __restrict__ out, int64_t g, int64_t k,
                      const int64_t* table) {
  switch (g) {
    case 2: return deinterleave_fixed<B, 2>(in, out, k);
    case 3: return deinterleave_fixed<B, 3>(in, out, k);
    case 4: return deinterleave_fixed<B, 4>(in, out, k);
    case 8: return deinterleave_fixed<B, 8>(in, out, k);
    default: gather_row<B>(in, nullptr, g * k, table, out, g * k);
  }
}

// out[o] = src(o) (forward), or dst(o) (inverse = true) for the shuffle of c channels in g groups.
std::vector<int64_t> permutation(int64_t c, int64_t g, bool inverse) {
  const int64_t k = c / g;
  std::vector<int64_t> table(c);
  for (int64_t o = 0; o < c; ++o) table[o] = inverse ? (o % k) * g + o / k : (o % g) * k + o / g;
  return table;
}

}  // namespace

// Also called directly by shuffle_python.cpp (plain eager inference without torch.ops).
at::Tensor channel_shuffle_forward(const at::Tensor& a, const std::optional<at::Tensor>& b,
                                   const std::optional<at::Tensor>& bias, int64_t groups,
                                   int64_t act, bool channels_last) {
  const ShuffleShape sh = shuffle::forward_shape(a, b, bias, groups, act, channels_last);
  const int64_t n = sh.n, c = sh.c, hw = sh.hw, ca = sh.split;
  const bool has_b = b.has_value() && b->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor y = at::empty({n, c, a.size(2), a.size(3)},
                           a.options().memory_format(shuffle::mem_format(channels_last)));
  if (y.numel() == 0) return y;
  const auto table = permutation(c, groups, false);
  FB_DISPATCH_FLOATING(a.scalar_type(), "channel_shuffle_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using B = Bits<scalar_t>;
    const Channels<const B> in{reinterpret_cast<const B*>(a.const_data_ptr<scalar_t>()),
                               has_b ? reinterpret_cast<const B*>(b->const_data_ptr<scalar_t>())
                                     : nullptr,
                               sh};
    B* out = reinterpret_cast<B*>(y.mutable_data_ptr<scalar_t>());
    // bias in output order (NHWC rows) or per source channel (NCHW planes), in acc_t
    std::vector<acc_t> pbias;
    if (has_bias) {
      const scalar_t* bp = bias->const_data_ptr<scalar_t>();
      pbias.resize(c);
      for (int64_t o = 0; o < c; ++o) pbias[o] = static_cast<acc_t>(bp[table[o]]);
    }
    dispatch_act(static_cast<int>(act), [&](auto a_) {
      constexpr int ACT = decltype(a_)::value;
      auto run = [&](auto bias_flag) {
        constexpr bool BIAS = decltype(bias_flag)::value;
        constexpr bool EPILOGUE = BIAS || ACT != 0;
        if (!channels_last) {
          const int64_t grain = std::max<int64_t>(1, kGrain / hw);
          at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
            if constexpr (!EPILOGUE) {
              copy_runs<B>([&](int64_t i) { return in.plane(i / c, table[i % c]); },
                           [&](int64_t i) { return out + i * hw; }, hw, begin, end);
              return;
            }
            for (int64_t i = begin; i < end; ++i) {
              const int64_t o = i % c;
              const B* src = in.plane(i / c, table[o]);
              B* dst = out + i * hw;
              {
                plane_epilogue<scalar_t, ACT, BIAS>(reinterpret_cast<const scalar_t*>(src),
                                                    reinterpret_cast<scalar_t*>(dst), hw,
                                                    BIAS ? pbias[o] : acc_t(0));
              }
            }
          });
        } else {
          const int64_t grain = std::max<int64_t>(1, kGrain / c);
          const int64_t k = c / groups;
          const bool by_rows = ca % k == 0;
          at::parallel_for(0, n * hw, grain, [&](int64_t begin, int64_t end) {
            std::vector<const B*> rows(by_rows ? groups : 0);
            for (int64_t q = begin; q < end; ++q) {
              B* dst = out + q * c;
              if (by_rows) {
                const B* r0 = in.row0(q);
                const B* r1 = in.row1(q);
                for (int64_t j = 0; j < groups; ++j)
                  rows[j] = j * k < ca ? r0 + j * k : r1 + (j * k - ca);
                interleave_rows(rows.data(), dst, groups, k);
              } else {
                gather_row(in.row0(q), in.row1(q), ca, table.data(), dst, c);
              }
              if constexpr (EPILOGUE) {
                row_epilogue<scalar_t, ACT, BIAS>(reinterpret_cast<scalar_t*>(dst),
                                                  BIAS ? pbias.data() : nullptr, c);
              }
            }
          });
        }
      };
      if (has_bias) run(std::true_type{}); else run(std::false_type{});
    });
  });
  return y;
}

// Also called directly by shuffle_python.cpp (its C++ autograd node).
std::tuple<at::Tensor, at::Tensor> channel_shuffle_backward(const at::Tensor& grad,
                                                            const std::optional<at::Tensor>& y,
                                                            int64_t split, int64_t groups,
                                                            int64_t act, bool channels_last) {
  const ShuffleShape sh = shuffle::backward_shape(grad, y, split, groups, act, channels_last);
  const int64_t n = sh.n, c = sh.c, hw = sh.hw;
  const bool has_y = act != 0;
  const auto options = grad.options().memory_format(shuffle::mem_format(channels_last));
  at::Tensor ga = at::empty({n, split, grad.size(2), grad.size(3)}, options);
  at::Tensor gb = at::empty({n, c - split, grad.size(2), grad.size(3)}, options);
  if (grad.numel() == 0) return {ga, gb};
  const auto table = permutation(c, groups, true);
  FB_DISPATCH_FLOATING(grad.scalar_type(), "channel_shuffle_backward", [&] {
    using B = Bits<scalar_t>;
    const B* gp = reinterpret_cast<const B*>(grad.const_data_ptr<scalar_t>());
    const B* yp = has_y ? reinterpret_cast<const B*>(y->const_data_ptr<scalar_t>()) : nullptr;
    const Channels<B> out{reinterpret_cast<B*>(ga.mutable_data_ptr<scalar_t>()),
                          reinterpret_cast<B*>(gb.mutable_data_ptr<scalar_t>()), sh};
    dispatch_act(static_cast<int>(act), [&](auto a_) {
      constexpr int ACT = decltype(a_)::value;
      if constexpr (ACT == 0 || ACT == int(Act::kReLU) || ACT == int(Act::kReLU6)) {
        if (!channels_last) {
          const int64_t grain = std::max<int64_t>(1, kGrain / hw);
          at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
            if constexpr (ACT == 0) {
              copy_runs<B>([&](int64_t i) { return gp + (i - i % c + table[i % c]) * hw; },
                           [&](int64_t i) { return out.plane(i / c, i % c); }, hw, begin, end);
              return;
            }
            for (int64_t i = begin; i < end; ++i) {
              const int64_t nn = i / c, cc = i % c;
              const int64_t from = (nn * c + table[cc]) * hw;
              B* dst = out.plane(nn, cc);
              {
                grad_epilogue<scalar_t, ACT>(reinterpret_cast<const scalar_t*>(gp + from),
                                             reinterpret_cast<const scalar_t*>(yp + from),
                                             reinterpret_cast<scalar_t*>(dst), hw);
              }
            }
          });
        } else {
          const int64_t grain = std::max<int64_t>(1, kGrain / c);
          at::parallel_for(0, n * hw, grain, [&](int64_t begin, int64_t end) {
            // a whole row when it must be split in two or carry act' (read with y's row)
            std::vector<B> gbuf, ybuf;
            const bool direct = ACT == 0 && split == c;
            if (!direct) gbuf.resize(c);
            if (ACT != 0) ybuf.resize(c);
            for (int64_t q = begin; q < end; ++q) {
              B* g_row = direct ? out.row0(q) : gbuf.data();
              deinterleave_row<B>(gp + q * c, g_row, groups, c / groups, table.data());
              if (direct) continue;
              if constexpr (ACT != 0) {
                deinterleave_row<B>(yp + q * c, ybuf.data(), groups, c / groups, table.data());
                grad_epilogue<scalar_t, ACT>(reinterpret_cast<const scalar_t*>(g_row),
                                             reinterpret_cast<const scalar_t*>(ybuf.data()),
                                             reinterpret_cast<scalar_t*>(g_row), c);
              }
              if (split) std::memcpy(out.row0(q), g_row, split * sizeof(B));
              if (c - split) std::memcpy(out.row1(q), g_row + split, (c - split) * sizeof(B));
            }
          });
        }
      }
    });
  });
  return {ga, gb};
}

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("channel_shuffle_forward", &channel_shuffle_forward);
  m.impl("channel_shuffle_backward", &channel_shuffle_backward);
}

}  // namespace fastblocks::cpu
