// CPU kernels of squeeze-and-excitation: y = x * gate(fc2(act(fc1(mean_hw(x))))).
//
// Forward: one pass sums each (n, c) plane of x in the accumulation type (float; double for
// fp64), the tiny MLP runs on the (N, C) means (by hand, se_cpu_mlp.h), and one pass writes
// y = x * s, group of images by group (kGroupBytes) so the second pass reads x from cache.
// Backward: one pass sums grad * x per (n, c), the MLP backward gives the parameter gradients
// and the gradient of the means (by hand up to se_mlp::kHandBackwardRows images, else ATen's
// GEMMs, squeeze_excite_mlp.h), and one pass writes
// grad_x = grad * s + grad_mean / (H*W). Sums never touch fp16/bf16 arithmetic, so an fp16
// plane whose sum passes 65504 still has a finite mean (eager's fp16 pool, too, accumulates in
// float on CPU; the GPU reports of NaN, pytorch/pytorch#43992, are the reason to be sure).
//
// Layouts: NCHW sums contiguous planes; channels_last (NHWC) adds rows of C channels into a
// per-task vector of partial sums, split over H*W when the batch alone does not fill the
// threads (EfficientNet-B0's first SE runs on 1x32x112x112 at batch 1).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#if defined(__SSE__)
#include <immintrin.h>
#endif
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/cpu_vec.h"
#include "fastblocks/se_cpu_mlp.h"
#include "fastblocks/squeeze_excite_mlp.h"

namespace fastblocks::cpu {
namespace {

namespace se = fastblocks::squeeze_excite;

// Elements per parallel task, as in activation.cpp.
constexpr int64_t kGrain = 32768;
// fp16/bf16 go through float buffers of this many elements (see activation.cpp).
constexpr int64_t kChunk = 512;
// Independent partial sums of a plane: breaks the add chain so the float loop vectorizes
// (without -ffast-math GCC keeps one serial chain otherwise).
constexpr int kLanes = 16;
// Partial sums of long runs (blocks of kSumBlock, planes of 128+): four AVX-512 vectors, so the
// adds of data in cache are not one latency-bound chain (batch-1 planes are pooled from L2).
constexpr int kWideLanes = 64;
// Bytes of x per group of images in the forward (see squeeze_excite_forward): within the L2
// of two cores or a slice of L3 on the x86 server CPUs we run on.
//
// Measured with `fastblocks bench ops --op squeeze_excite --threads 1` (2-core AMD EPYC VM shared
// with other helpers' builds, load average 3-4, torch 2.13, fp32, in-process interleaved
// medians; bench/results/cpu-amd-epyc-1t/se-{before,after}-*.json): over the 80 cases of
// MobileNetV3-Large, EfficientNet-B0 and SE-ResNet-50 (batch 1 and 32, NCHW and channels_last),
// forward geomean 1.29x eager before this kernel's hand MLP, plane runs and streamed stores,
// fwd+bwd 1.68x; the after numbers are in the rule's docstring
// (fastblocks/optimize/rules/squeeze_excite.py).
constexpr int64_t kGroupBytes = int64_t(2) << 20;

// An fp32 output of this many bytes or more is written with non-temporal stores: it cannot stay
// in the caches for the next layer anyway (3/4 of the 32 MB L3 of the AMD EPYC we measure on,
// glibc memcpy's rule for its own non-temporal threshold), and plain stores read every line of
// y from memory before writing it, a third of the forward's memory traffic.
constexpr int64_t kStreamBytes = int64_t(24) << 20;

// Sums run in the accumulation type (float) over blocks of kSumBlock elements (or rows) and
// in double across blocks: one float chain over the 12544 elements of a 112x112 plane, or over
// the rows of an NHWC image, lost up to 10x more than eager's cascade sum in the bias
// gradients (measured: grad b1 of a 3x24x30x30 channels_last map, 3.7e-5 vs eager's 3.6e-6
// from float64), and double throughout made the in-cache batch-1 passes slower than eager's.
using sum_t = double;
constexpr int64_t kSumBlock = 256;  // elements of a plane: 4 per lane of lanes_sum
// NHWC rows per float block: each channel is one float chain per block (256 rows lost 2.4x
// eager's error in grad w2 of a 3x64x96x96 map; 16 keep it within eager's)
constexpr int64_t kSumRows = 16;

// sum_i a[i] (* b[i]) over n elements in LANES independent chains, added pairwise at the end.
// Inlined into the multi-versioned callers below, so each clone vectorizes it for its ISA.
template <typename T, bool PRODUCT, int LANES>
inline __attribute__((always_inline)) T chains_sum(const T* __restrict__ a, const T* __restrict__ b,
                                                   int64_t n) {
  T part[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    for (int k = 0; k < LANES; ++k) part[k] += PRODUCT ? a[i + k] * b[i + k] : a[i + k];
  }
  T tail = 0;
  for (; i < n; ++i) tail += PRODUCT ? a[i] * b[i] : a[i];
  for (int w = LANES / 2; w >= 1; w /= 2) {
    for (int k = 0; k < w; ++k) part[k] += part[k + w];
  }
  return part[0] + tail;
}

template <typename T, bool PRODUCT>
FB_CPU_CLONES T lanes_sum(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  return chains_sum<T, PRODUCT, kWideLanes>(a, b, n);
}

// out[p] = sum_i a[p * HW + i] (* b[...]) for `planes` planes of HW <= kSumBlock elements, in one
// call: one multi-versioned (indirect) call per 7x7 plane cost as much as its 49 adds
// (32x672x7x7 NCHW: lanes_sum calls were 17% of the forward's time).
template <typename T, bool PRODUCT, int LANES>
FB_CPU_CLONES void small_plane_sums(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                    int64_t planes, int64_t HW) {
  for (int64_t p = 0; p < planes; ++p) out[p] = chains_sum<T, PRODUCT, LANES>(a + p * HW, b + p * HW, HW);
}

// sum_i a[i] (* b[i]) over one contiguous plane.
template <typename scalar_t, bool PRODUCT>
sum_t plane_sum(const scalar_t* a, const scalar_t* b, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  sum_t total = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i0 = 0; i0 < n; i0 += kSumBlock) {
      total += lanes_sum<acc_t, PRODUCT>(a + i0, b + i0, std::min(kSumBlock, n - i0));
    }
  } else {
    alignas(64) acc_t ab[kSumBlock], bb[kSumBlock];
    for (int64_t i0 = 0; i0 < n; i0 += kSumBlock) {
      const int64_t m = std::min(kSumBlock, n - i0);
      widen_n(a + i0, ab, m);
      if constexpr (PRODUCT) widen_n(b + i0, bb, m);
      total += lanes_sum<acc_t, PRODUCT>(ab, bb, m);
    }
  }
  return total;
}

template <typename T, bool PRODUCT>
FB_CPU_CLONES void add_row(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ acc,
                           int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += PRODUCT ? a[i] * b[i] : a[i];
}

// add_row over `rows` consecutive rows of n channels: one call per block of rows, not per row
// (a multi-versioned function is an indirect call: per 32-channel row it cost more than the
// adds; 1x32x112x112 NHWC pooled at 0.65x eager that way).
template <typename T, bool PRODUCT>
FB_CPU_CLONES void add_rows(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ acc,
                            int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) acc[i] += PRODUCT ? a[r * n + i] * b[r * n + i] : a[r * n + i];
  }
}

FB_CPU_CLONES inline void flush_row(float* __restrict__ acc, sum_t* __restrict__ total, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    total[i] += acc[i];
    acc[i] = 0.0f;
  }
}

// acc[c] += a[c] (* b[c]) for one NHWC row of n channels, in the accumulation type.
template <typename scalar_t, bool PRODUCT>
void accumulate_row(const scalar_t* a, const scalar_t* b, at::opmath_type<scalar_t>* acc, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    add_row<acc_t, PRODUCT>(a, b, acc, n);
  } else {
    alignas(64) acc_t ab[kChunk], bb[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(a + i0, ab, m);
      if constexpr (PRODUCT) widen_n(b + i0, bb, m);
      add_row<acc_t, PRODUCT>(ab, bb, acc + i0, m);
    }
  }
}

// out[n, c] = sum over H, W of a (* b), for contiguous NCHW or NHWC a and b of x's shape.
template <typename scalar_t, bool PRODUCT>
void reduce_planes(const scalar_t* a, const scalar_t* b, at::opmath_type<scalar_t>* out, int64_t N,
                   int64_t C, int64_t HW, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!channels_last) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / HW), [&](int64_t p0, int64_t p1) {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        if (HW <= kSumBlock) {
          if (HW >= 2 * kWideLanes) {
            return small_plane_sums<acc_t, PRODUCT, kWideLanes>(a + p0 * HW, b + p0 * HW, out + p0, p1 - p0, HW);
          }
          return small_plane_sums<acc_t, PRODUCT, kLanes>(a + p0 * HW, b + p0 * HW, out + p0, p1 - p0, HW);
        }
      }
      for (int64_t p = p0; p < p1; ++p) {
        out[p] = static_cast<acc_t>(plane_sum<scalar_t, PRODUCT>(a + p * HW, b + p * HW, HW));
      }
    });
    return;
  }
  // Split each image's rows into `parts` ranges so N * parts tasks fill the threads; partial
  // sums (N * parts * C accumulators, parts <= H*W: bounded by x's size) are added in order.
  const int64_t threads = at::get_num_threads();
  const int64_t parts = std::clamp<int64_t>((threads + N - 1) / std::max<int64_t>(N, 1), 1,
                                            std::min<int64_t>(HW, std::max<int64_t>(1, HW * C / kGrain)));
  std::vector<sum_t> partial(N * parts * C, sum_t(0));
  at::parallel_for(0, N * parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / parts, part = t % parts;
      const int64_t r0 = HW * part / parts, r1 = HW * (part + 1) / parts;
      sum_t* total = partial.data() + t * C;
      std::vector<acc_t> acc(C, acc_t(0));
      for (int64_t rb = r0; rb < r1; rb += kSumRows) {
        const int64_t rows = std::min(kSumRows, r1 - rb), off = (n * HW + rb) * C;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          add_rows<acc_t, PRODUCT>(a + off, b + off, acc.data(), rows, C);
        } else {
          for (int64_t r = 0; r < rows; ++r) {
            accumulate_row<scalar_t, PRODUCT>(a + off + r * C, b + off + r * C, acc.data(), C);
          }
        }
        if constexpr (std::is_same_v<acc_t, float>) {
          flush_row(acc.data(), total, C);
        } else {
          for (int64_t c = 0; c < C; ++c) total[c] += acc[c], acc[c] = 0;
        }
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      sum_t sum = 0;
      for (int64_t part = 0; part < parts; ++part) sum += partial[(n * parts + part) * C + c];
      out[n * C + c] = static_cast<acc_t>(sum);
    }
  }
}

// out[i] = a[i] * s[i] (+ q[i]) in the accumulation type; s and q are broadcast (index 0) when
// BCAST. No __restrict__ between a and out: the backward may write grad_x over grad.
template <typename acc_t, bool BCAST, bool ADD>
FB_CPU_CLONES void scale_add(const acc_t* a, const acc_t* __restrict__ s, const acc_t* __restrict__ q,
                             acc_t* out, int64_t n) {
  if constexpr (BCAST) {
    const acc_t sv = s[0], qv = ADD ? q[0] : acc_t(0);
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) out[i] = ADD ? a[i] * sv + qv : a[i] * sv;
  } else {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) out[i] = ADD ? a[i] * s[i] + q[i] : a[i] * s[i];
  }
}

// scale_add over `planes` consecutive NCHW planes of HW elements, plane p scaled by s[p] (+ q[p]),
// in one multi-versioned call (see small_plane_sums).
template <typename acc_t, bool ADD>
FB_CPU_CLONES void scale_plane_run(const acc_t* a, const acc_t* __restrict__ s, const acc_t* __restrict__ q,
                                   acc_t* out, int64_t planes, int64_t HW) {
  for (int64_t p = 0; p < planes; ++p) {
    const acc_t sv = s[p], qv = ADD ? q[p] : acc_t(0);
    const acc_t* ap = a + p * HW;
    acc_t* op = out + p * HW;
#pragma GCC ivdep
    for (int64_t i = 0; i < HW; ++i) op[i] = ADD ? ap[i] * sv + qv : ap[i] * sv;
  }
}

// scale_add over `rows` NHWC rows of n channels sharing s and q (one image).
template <typename acc_t, bool ADD>
FB_CPU_CLONES void scale_rows(const acc_t* a, const acc_t* __restrict__ s, const acc_t* __restrict__ q,
                              acc_t* out, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      out[r * n + i] = ADD ? a[r * n + i] * s[i] + q[i] : a[r * n + i] * s[i];
    }
  }
}

template <typename scalar_t, bool BCAST, bool ADD>
void scale_span(const scalar_t* a, const at::opmath_type<scalar_t>* s, const at::opmath_type<scalar_t>* q,
                scalar_t* out, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    scale_add<acc_t, BCAST, ADD>(a, s, q, out, n);
  } else {
    alignas(64) acc_t buf[kChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
      const int64_t m = std::min(kChunk, n - i0);
      widen_n(a + i0, buf, m);
      scale_add<acc_t, BCAST, ADD>(buf, BCAST ? s : s + i0, BCAST ? q : (ADD ? q + i0 : q), buf, m);
      narrow_n(buf, out + i0, m);
    }
  }
}

// out[i] = a[i] * s[i * s_step] for i < n, float, with non-temporal (streaming) stores: the
// lines of out are written without being read first. SSE (baseline x86-64), so no per-ISA
// clone is needed: the loop is bound by memory, not by 4-float multiplies.
inline void scale_stream(const float* a, const float* s, int64_t s_step, float* out, int64_t n) {
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(out + i) & 15); ++i) out[i] = a[i] * s[i * s_step];
#if defined(__SSE__)
  if (s_step == 0) {
    const __m128 sv = _mm_set1_ps(s[0]);
    for (; i + 4 <= n; i += 4) _mm_stream_ps(out + i, _mm_mul_ps(_mm_loadu_ps(a + i), sv));
  } else {
    for (; i + 4 <= n; i += 4) _mm_stream_ps(out + i, _mm_mul_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(s + i)));
  }
#endif
  for (; i < n; ++i) out[i] = a[i] * s[i * s_step];
}

// Orders this thread's streamed stores before the ones it makes next (the task's completion,
// which hands y to the caller).
inline void stream_fence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

// out = a * s[n, c] (+ q[n, c]) over x's shape, NCHW or NHWC. STREAM: non-temporal stores
// (fp32 forward only; see kStreamBytes).
template <typename scalar_t, bool ADD, bool STREAM = false>
void scale_planes(const scalar_t* a, const at::opmath_type<scalar_t>* s, const at::opmath_type<scalar_t>* q,
                  scalar_t* out, int64_t N, int64_t C, int64_t HW, bool channels_last) {
  if constexpr (STREAM) {
    static_assert(std::is_same_v<scalar_t, float> && !ADD, "streaming scale: fp32 forward only");
    // Each task ends with an sfence on its own thread: streamed stores are weakly ordered, and a
    // fence on the calling thread orders only that thread's stores, not the pool's.
    if (!channels_last) {
      at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / HW), [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) scale_stream(a + p * HW, s + p, 0, out + p * HW, HW);
        stream_fence();
      });
    } else {
      at::parallel_for(0, N * HW, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) scale_stream(a + r * C, s + (r / HW) * C, 1, out + r * C, C);
        stream_fence();
      });
    }
    return;
  }
  if (!channels_last) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / HW), [&](int64_t p0, int64_t p1) {
      if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
        return scale_plane_run<scalar_t, ADD>(a + p0 * HW, s + p0, ADD ? q + p0 : q, out + p0 * HW, p1 - p0, HW);
      }
      for (int64_t p = p0; p < p1; ++p) {
        scale_span<scalar_t, true, ADD>(a + p * HW, s + p, ADD ? q + p : q, out + p * HW, HW);
      }
    });
  } else {
    at::parallel_for(0, N * HW, std::max<int64_t>(1, kGrain / C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1;) {
        const int64_t n = r / HW;
        const int64_t rows = std::min(r1, (n + 1) * HW) - r;  // rows of image n in this task
        const auto* sn = s + n * C;
        const auto* qn = ADD ? q + n * C : q;
        if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
          scale_rows<scalar_t, ADD>(a + r * C, sn, qn, out + r * C, rows, C);
        } else {
          for (int64_t k = 0; k < rows; ++k) {
            scale_span<scalar_t, false, ADD>(a + (r + k) * C, sn, qn, out + (r + k) * C, C);
          }
        }
        r += rows;
      }
    });
  }
}

// The forward's scale pass: y = x * s, streamed for large fp32 outputs (kStreamBytes).
template <typename scalar_t>
void scale_forward(const scalar_t* x, const at::opmath_type<scalar_t>* s, scalar_t* y, int64_t N, int64_t C,
                   int64_t HW, bool channels_last, bool stream) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) return scale_planes<float, false, true>(x, s, nullptr, y, N, C, HW, channels_last);
  }
  scale_planes<scalar_t, false>(x, s, nullptr, y, N, C, HW, channels_last);
}

std::tuple<at::Tensor, at::Tensor> squeeze_excite_forward(
    const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
    const at::Tensor& w2, const std::optional<at::Tensor>& b2, int64_t act, int64_t gate,
    bool channels_last) {
  constexpr const char* op = "squeeze_excite_forward";
  se::check_args(op, x, w1, b1, w2, b2, act, gate, channels_last);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor pooled = at::empty({N, C}, x.options().dtype(se::acc_type(x)));
  at::Tensor y = at::empty_like(x, x.options().memory_format(se::mem_format(channels_last)));
  if (x.numel() == 0) return {y, pooled};
  // Images go in groups of about kGroupBytes, pooled, MLP'd and scaled group by group, so the
  // scale pass re-reads x from cache rather than memory: both passes of eager (pool, then
  // mul) stream x from DRAM, and the first pass is all the memory traffic this saves.
  const int64_t image_bytes = C * HW * static_cast<int64_t>(x.element_size());
  const int64_t group = std::clamp<int64_t>(kGroupBytes / std::max<int64_t>(image_bytes, 1), 1, N);
  const int64_t R = w1.size(0);
  const auto acc = se::acc_type(x);
  const auto as_acc = [&](const std::optional<at::Tensor>& t) {
    return se::has(t) ? t->to(acc).contiguous() : at::Tensor();
  };
  const at::Tensor w1a = w1.to(acc).contiguous(), w2a = w2.to(acc).contiguous();
  const at::Tensor b1a = as_acc(b1), b2a = as_acc(b2);
  std::vector<char> scratch;
  const bool stream = y.nbytes() >= kStreamBytes;
  FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    acc_t* pp = pooled.mutable_data_ptr<acc_t>();
    const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<acc_t>() : nullptr; };
    scratch.resize(sizeof(acc_t) * group * (R + C));
    acc_t* h = reinterpret_cast<acc_t*>(scratch.data());
    acc_t* s = h + group * R;
    for (int64_t n0 = 0; n0 < N; n0 += group) {
      const int64_t nn = std::min(group, N - n0), off = n0 * C * HW;
      reduce_planes<scalar_t, false>(xp + off, xp + off, pp + n0 * C, nn, C, HW, channels_last);
      for (int64_t i = n0 * C; i < (n0 + nn) * C; ++i) pp[i] /= acc_t(HW);  // as eager's mean
      se_mlp::forward<acc_t>(pp + n0 * C, ptr(w1a), ptr(b1a), ptr(w2a), ptr(b2a), h, s, nn, C, R,
                             static_cast<int>(act), static_cast<int>(gate));
      scale_forward<scalar_t>(xp + off, s, yp + off, nn, C, HW, channels_last, stream);
    }
  });
  return {y, pooled};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& pooled, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
    int64_t act, int64_t gate, bool channels_last) {
  constexpr const char* op = "squeeze_excite_backward";
  se::check_args(op, x, w1, b1, w2, b2, act, gate, channels_last);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous(se::mem_format(channels_last)), op,
              ": grad must have x's shape and memory format, got ", grad.sizes());
  se::check_like(grad, x, op, "grad");
  TORCH_CHECK(pooled.sizes() == at::IntArrayRef({N, C}) && pooled.scalar_type() == se::acc_type(x) &&
                  pooled.is_contiguous(),
              op, ": pooled must be the forward's contiguous (N, C) means in ", se::acc_type(x));
  at::Tensor gs = at::empty({N, C}, pooled.options());
  at::Tensor gx = at::empty_like(x, x.options().memory_format(se::mem_format(channels_last)));
  FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (x.numel()) {
      reduce_planes<scalar_t, true>(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                    gs.mutable_data_ptr<acc_t>(), N, C, HW, channels_last);
    } else {
      gs.zero_();
    }
  });
  if (N <= se_mlp::kHandBackwardRows) {
    const auto acc = se::acc_type(x);
    const auto as_acc = [&](const std::optional<at::Tensor>& t) {
      return se::has(t) ? t->to(acc).contiguous() : at::Tensor();
    };
    const at::Tensor w1a = w1.to(acc).contiguous(), w2a = w2.to(acc).contiguous();
    const at::Tensor b1a = as_acc(b1), b2a = as_acc(b2);
    const int64_t R = w1.size(0);
    at::Tensor gp = at::empty({N, C}, pooled.options()), gw1 = at::empty({R, C}, pooled.options()),
               gb1 = at::empty({R}, pooled.options()), gw2 = at::empty({C, R}, pooled.options()),
               gb2 = at::empty({C}, pooled.options());
    FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<acc_t>() : nullptr; };
      std::vector<acc_t> s(N * C);  // the gate's output, for the grad_x pass
      se_mlp::backward<acc_t>(pooled.const_data_ptr<acc_t>(), gs.const_data_ptr<acc_t>(), ptr(w1a), ptr(b1a),
                              ptr(w2a), ptr(b2a), N, C, R, static_cast<int>(act), static_cast<int>(gate),
                              gp.mutable_data_ptr<acc_t>(), gw1.mutable_data_ptr<acc_t>(),
                              gb1.mutable_data_ptr<acc_t>(), gw2.mutable_data_ptr<acc_t>(),
                              gb2.mutable_data_ptr<acc_t>(), s.data());
      if (x.numel()) {
        acc_t* q = gp.mutable_data_ptr<acc_t>();
        for (int64_t i = 0; i < N * C; ++i) q[i] /= acc_t(HW);  // a division, as eager's pool backward
        scale_planes<scalar_t, true>(grad.const_data_ptr<scalar_t>(), s.data(), q,
                                     gx.mutable_data_ptr<scalar_t>(), N, C, HW, channels_last);
      }
    });
    const auto wt = w1.scalar_type();
    return {gx, gw1.to(wt), gb1.to(wt), gw2.to(wt), gb2.to(wt)};
  }
  const se::Mlp m = se::mlp_forward(pooled, w1, b1, w2, b2, act, gate);
  auto [gp, gw1, gb1, gw2, gb2] = se::mlp_backward(gs, pooled, m, w1, w2, act, gate);
  if (x.numel()) {
    const at::Tensor s = m.s.contiguous();
    const at::Tensor q = (gp / HW).contiguous();  // a division, as eager's pool backward
    FB_DISPATCH_FLOATING(x.scalar_type(), op, [&] {
      using acc_t = at::opmath_type<scalar_t>;
      scale_planes<scalar_t, true>(grad.const_data_ptr<scalar_t>(), s.const_data_ptr<acc_t>(),
                                   q.const_data_ptr<acc_t>(), gx.mutable_data_ptr<scalar_t>(), N, C, HW,
                                   channels_last);
    });
  }
  return {gx, gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("squeeze_excite_forward", &squeeze_excite_forward);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward);
}

}  // namespace fastblocks::cpu
