// CPU kernel of the inverted-residual block (MobileNetV2's bottleneck, Sandler et al., CVPR
// 2018, Fig. 3b; MnasNet's MBConv without SE), inference with BN folded into the weights:
//   y = project(act_dw(depthwise(act_e(expand(x))))) [+ x]
// in one pass over x and y: the expanded tensor (6x the block's channels) never reaches DRAM.
//
// Per image and per band of R output rows, on one thread: the expand 1x1 conv is one GEMM
// (pointwise_cpu_gemm.h, bias + activation in its registers; PointwiseConv) over the input rows
// the band's depthwise window needs, written to a per-thread scratch buffer sized for L2; the
// depthwise conv + bias + activation writes the band's output rows to a second scratch buffer;
// the project 1x1 conv is one GEMM from it straight into the output rows, + bias (+ x). Bands of
// an image run in order, so the depthwise halo (the kh - 1 input rows two bands share) is kept
// (moved to the buffer's front) instead of recomputed. at::parallel_for runs over (image, segment
// of rows); an image is split into segments only when there are fewer images than threads (each
// segment recomputes one halo). Where a whole image fits one band, or the map is small
// (kSmallMap), a task is a group of whole images instead, one GEMM each for all of them (with
// fewer images than threads: one band of each image per thread). The 1x1 weights come packed for
// the GEMM by the caller (pointwise_pack, cached with the folded weights) or are packed here,
// once per call. The depthwise rows run the depthwise family's channels_last row kernel (sliding
// register blocks, the input read in place: depthwise_cpu_row_kernels.h), 2-2.5x this file's
// first per-pixel loop (blocks 2-7 of MobileNetV2, thread CPU time), and its vectorized
// activation.
//
// Layout: x is read as NHWC (channels_last; any other layout is copied once), y is returned
// channels_last. float32 only (the Python op runs the eager composition for other dtypes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "fastblocks/cpu_utils.h"
#include "fastblocks/cpu_vec.h"
#include "fastblocks/depthwise_cpu_kernels.h"
#include "fastblocks/pointwise_cpu_gemm.h"

// 64-byte vectors stay inside always-inline helpers: the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastblocks::cpu {
namespace {

// Bytes of scratch (expanded rows + depthwise output rows) per band: most of the 1 MB L2 of a
// core of the EPYC dev VM (MKL's packed weight panels sit there too). Per phase, thread CPU
// time, MobileNetV2 b8, 1 thread: 768 KB against 384 KB took blocks 2-4 from 22.4 to 20.5 ms
// (fewer, taller bands: the project GEMM of block 2 (N = 24) ran M = 112 rows a call before,
// 44 GF/s, 53 GF/s at M = 336); 1 MB 20.0 ms, within the noise of the loaded VM, and it leaves
// no L2 to the weights.
constexpr int64_t kBandBytes = 768 * 1024;
// Maps of at most this many output positions (14x14 and below) run whole images, G of them per
// GEMM (an expanded 14x14x576 image is 450 KB: a band of it would be 4 rows, M = 56), so the
// GEMMs see M = G * H * W rows as the per-layer convolutions do; G images' scratch within
// kGroupBytes (L2 + L3), and at least as many groups as threads.
constexpr int64_t kSmallMap = 14 * 14;
constexpr int64_t kGroupBytes = 2048 * 1024;
constexpr int64_t kL = 16;  // channels per vector step (one AVX-512 register of floats)
constexpr int64_t kPrefetchAhead = 2;  // output rows between a prefetch and its use

// y[p][c] = act(y[p][c] + bias[c]) over `npos` positions of C channels (row stride C).
template <int ACT>
FB_CPU_CLONES void bias_act_rows(float* __restrict__ y, int64_t npos, int64_t C,
                                 const float* __restrict__ bias) {
  for (int64_t p = 0; p < npos; ++p) {
    float* r = y + p * C;
    if (bias != nullptr) {
      for (int64_t c = 0; c < C; ++c) r[c] = act_forward_ct<ACT, float>(r[c] + bias[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) r[c] = act_forward_ct<ACT, float>(r[c]);
    }
  }
}

// y[p][c] += bias[c] (+ res[p][c]) over `npos` positions of C channels; either may be null.
FB_CPU_CLONES void add_bias_residual(float* __restrict__ y, int64_t npos, int64_t C,
                                     const float* __restrict__ bias,
                                     const float* __restrict__ res) {
  for (int64_t p = 0; p < npos; ++p) {
    float* r = y + p * C;
    if (bias != nullptr && res != nullptr) {
      const float* q = res + p * C;
      for (int64_t c = 0; c < C; ++c) r[c] += bias[c] + q[c];
    } else if (bias != nullptr) {
      for (int64_t c = 0; c < C; ++c) r[c] += bias[c];
    } else if (res != nullptr) {
      const float* q = res + p * C;
      for (int64_t c = 0; c < C; ++c) r[c] += q[c];
    }
  }
}

// Whether a 1x1 conv with K input channels runs the pointwise GEMM (pointwise_cpu_gemm.h) rather
// than MKL's at::mm_out + a separate epilogue pass. Measured in place (MobileNetV2 b8, fp32, 1
// thread, thread CPU time, AMD EPYC Zen 4 dev VM, AVX-512), GF/s of the GEMM calls, ours (with
// the epilogue) / MKL (without it), expand then project: block 1 (no expand) 39 / 28-61 (K 32,
// N 16: memory-bound, noisy), block 2 77 / 60 and 96 / 59, block 3 82 / 68 and 104 / 65, blocks
// 5-7 87 / 76 and 104 / 83, 8-11 93 / 84 and 109 / 92, 12-14 98 / 90 and 106 / 91, 15-17 96 / 83
// and 105 / 90 (K 960, N 320: 108 / 87). Per block, ms, MKL -> ours: 1: 5.0 -> 4.3, 2: 8.3 ->
// 6.3, 3: 7.0 -> 5.3, 4: 3.8 -> 3.0, 5: 2.6 -> 2.1, 12: 4.3 -> 3.9, 15: 2.8-3.3 -> 2.7-2.8,
// 17: 4.0-4.2 -> 4.2. So every 1x1 conv of MobileNetV2 takes it. The kernel does not split K: a
// weight panel (K x 32 floats) past about 128 KB (K > 1024, beyond any shape measured here)
// would leave L2, so those keep MKL.
constexpr int64_t kMaxGemmK = 1024;

// One 1x1 conv of the block, c[m] = act(a[m] * W^T + bias) (+ res[m]) over M positions: the
// pointwise GEMM with the epilogue in registers, or (K > kMaxGemmK) ATen's at::mm_out and the
// epilogue as a second pass. The GEMM reads `prepacked` (pointwise_pack of the same weight and
// bias) where the caller holds one, else packs the weight here, once per call: 1.7 ms of
// MobileNetV2's 57 (b8, 1 thread), serial before the parallel region.
struct PointwiseConv {
  bool fused = false;
  pw::GemmFn gemm = nullptr;
  pw::PackedWeights packed;
  at::Tensor storage;  // the packed copy made here (no prepacked one)
  at::Tensor wT;  // (K, N) view of the (N, K) weight, for at::mm_out
  const float* bias = nullptr;
  int64_t K = 0, N = 0;
  int act = 0;

  PointwiseConv(const at::Tensor& w, const float* b, int64_t n, int64_t k, int a,
                int64_t isa_lanes, const std::optional<at::Tensor>& prepacked)
      : fused(k <= kMaxGemmK), bias(b), K(k), N(n), act(a) {
    if (fused) {
      const int64_t lanes = pw::gemm_lanes(isa_lanes, N);
      gemm = pw::gemm_kernel(lanes);
      if (prepacked.has_value()) {
        TORCH_CHECK(prepacked->scalar_type() == at::kFloat && prepacked->is_contiguous() &&
                        prepacked->device().is_cpu() &&
                        prepacked->numel() == pw::packed_floats(N, K),
                    "inverted_residual_forward: a packed weight must be pointwise_pack's "
                    "output for a (", N, ", ", K, ") weight");
        packed = pw::view_packed(prepacked->const_data_ptr<float>(), b != nullptr, N, K, lanes);
      } else {
        storage = at::empty({pw::packed_floats(N, K)}, w.options());
        packed = pw::pack_weights(w.contiguous().const_data_ptr<float>(), b, N, K, lanes,
                                  storage.mutable_data_ptr<float>());
      }
    } else {
      wT = w.reshape({N, K}).t();
    }
  }

  // a: M rows of K floats (row stride K), c: M rows of N; res: M rows of N, row stride ldr
  void run(const float* a, int64_t M, float* c, const float* res, int64_t ldr) const {
    if (fused) {
      gemm(pw::GemmCall{a, K, &packed, c, N, res, ldr, M, act});
      return;
    }
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor out = at::from_blob(c, {M, N}, opts);
    at::mm_out(out, at::from_blob(const_cast<float*>(a), {M, K}, opts), wT);
    TORCH_CHECK(res == nullptr || ldr == N, "inverted_residual_forward: residual row stride");
    if (act != 0) {
      dispatch_act(act, [&](auto ac) { bias_act_rows<decltype(ac)::value>(c, M, N, bias); });
      if (res != nullptr) add_bias_residual(c, M, N, nullptr, res);
    } else if (bias != nullptr || res != nullptr) {
      add_bias_residual(c, M, N, bias, res);
    }
  }
};

struct DwGeom {
  int64_t W, C, OW, kh, kw, sw, pw, dw;
};

// 16 floats: one AVX-512 register (two AVX2 ones, four SSE ones in the other clones). A GCC
// vector type, because GCC kept a `float acc[16]` in 16 scalar registers here.
typedef float V16 __attribute__((vector_size(64)));

inline __attribute__((always_inline)) V16 load16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One output row of the depthwise conv, NHWC, for the shapes the depthwise family's row kernel
// does not slide over (dilation > 1, fewer than one vector of channels): out[ow][c] = bias[c] +
// sum over taps (i, j) of rows[i][iw][c] * wt[i * kw + j][c], iw = ow * sw - pw + j * dw;
// rows[i] is null for a tap row in the zero padding. wt: (kh * kw, C), the taps'
// weights channel-contiguous. The caller applies the activation.
FB_CPU_CLONES void depthwise_row(const float* const* rows, const DwGeom& g,
                                 const float* __restrict__ wt, const float* __restrict__ bias,
                                 float* __restrict__ out) {
  const int64_t C = g.C;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    float* o = out + ow * C;
    const int64_t iw0 = ow * g.sw - g.pw;
    int64_t c = 0;
    for (; c + kL <= C; c += kL) {
      V16 acc = bias != nullptr ? load16(bias + c) : V16{};
      for (int64_t i = 0; i < g.kh; ++i) {
        const float* r = rows[i];
        if (r == nullptr) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = iw0 + j * g.dw;
          if (iw < 0 || iw >= g.W) continue;
          acc += load16(r + iw * C + c) * load16(wt + (i * g.kw + j) * C + c);
        }
      }
      std::memcpy(o + c, &acc, sizeof(acc));
    }
    for (; c < C; ++c) {  // the last C % 16 channels
      float acc = bias != nullptr ? bias[c] : 0.0f;
      for (int64_t i = 0; i < g.kh; ++i) {
        const float* r = rows[i];
        if (r == nullptr) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = iw0 + j * g.dw;
          if (iw >= 0 && iw < g.W) acc += r[iw * C + c] * wt[(i * g.kw + j) * C + c];
        }
      }
      o[c] = acc;
    }
  }
}

const float* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<float>() : nullptr;
}

std::optional<at::Tensor> contiguous_vector(const std::optional<at::Tensor>& t, int64_t n,
                                            const char* name,
                                            const char* op = "inverted_residual_forward") {
  if (!t.has_value()) return std::nullopt;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == n, op, ": ", name,
              " must be a float32 tensor of ", n, " values");
  return t->contiguous();
}

at::Tensor inverted_residual_forward(const at::Tensor& x_in,
                                     const std::optional<at::Tensor>& w_expand,
                                     const std::optional<at::Tensor>& b_expand,
                                     const at::Tensor& w_dw,
                                     const std::optional<at::Tensor>& b_dw,
                                     const at::Tensor& w_project,
                                     const std::optional<at::Tensor>& b_project,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t expand_act,
                                     int64_t dw_act, bool residual,
                                     const std::optional<at::Tensor>& packed_expand,
                                     const std::optional<at::Tensor>& packed_project) {
  check_act(expand_act);
  check_act(dw_act);
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat,
              "inverted_residual_forward: x must be a 4-d float32 tensor");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "inverted_residual_forward: stride, padding, dilation must have 2 values");
  const int64_t N = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const bool expand = w_expand.has_value();
  const int64_t Ch = expand ? w_expand->size(0) : Cin;
  TORCH_CHECK(!expand || (w_expand->numel() == Ch * Cin && w_expand->scalar_type() == at::kFloat),
              "inverted_residual_forward: w_expand must be float32 (C_hidden, C_in, 1, 1)");
  TORCH_CHECK(w_dw.dim() == 4 && w_dw.size(0) == Ch && w_dw.size(1) == 1 &&
                  w_dw.scalar_type() == at::kFloat,
              "inverted_residual_forward: w_dw must be float32 (C_hidden, 1, kh, kw)");
  const int64_t kh = w_dw.size(2), kw = w_dw.size(3);
  const int64_t Cout = w_project.size(0);
  TORCH_CHECK(w_project.numel() == Cout * Ch && w_project.scalar_type() == at::kFloat,
              "inverted_residual_forward: w_project must be float32 (C_out, C_hidden, 1, 1)");
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  const int64_t dh = dilation[0], dwl = dilation[1];
  TORCH_CHECK(sh > 0 && sw > 0 && dh > 0 && dwl > 0 && ph >= 0 && pw >= 0,
              "inverted_residual_forward: bad stride/padding/dilation");
  const int64_t OH = (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t OW = (W + 2 * pw - dwl * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(OH > 0 && OW > 0, "inverted_residual_forward: empty output size");
  TORCH_CHECK(!residual || (Cout == Cin && OH == H && OW == W),
              "inverted_residual_forward: residual needs the output shape of x");

  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({N, Cout, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (N == 0) return y;
  const auto be = contiguous_vector(b_expand, Ch, "b_expand");
  const auto bd = contiguous_vector(b_dw, Ch, "b_dw");
  const auto bp = contiguous_vector(b_project, Cout, "b_project");
  TORCH_CHECK(expand || !be.has_value(), "inverted_residual_forward: b_expand without w_expand");
  // the taps channel-contiguous
  const at::Tensor wt = w_dw.reshape({Ch, kh * kw}).t().contiguous();
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const float* wtp = wt.const_data_ptr<float>();
  const float* bdp = opt_ptr(bd);

  // band height: the expanded rows of R output rows plus R depthwise output rows in kBandBytes
  const int64_t halo = (kh - 1) * dh;
  const int64_t row_e = W * Ch, row_d = OW * Ch;  // floats
  int64_t R = (kBandBytes / 4 - (expand ? (halo + 1) * row_e : 0)) /
              ((expand ? sh * row_e : 0) + row_d);
  R = std::clamp<int64_t>(R, 1, OH);
  const int64_t threads = at::get_num_threads();
  // whole images, G of them per GEMM, where one image fits a band or the map is small
  const int64_t per_image = (expand ? H * row_e : 0) + OH * row_d;  // floats
  int64_t G = 1;
  if (R == OH || OH * OW <= kSmallMap) {
    R = OH;
    // Each thread's images (ceil(N / threads)) in the fewest groups that fit kGroupBytes, split
    // evenly: a group count that is not a multiple of the threads leaves one idle. Taking G as
    // large as fits (3 images of 14x14x384, MobileNetV2 blocks 8-10, b8) made 3 groups for 2
    // threads: those blocks ran 1.27x faster on 2 threads than on 1 (wall, the VM).
    const int64_t per_thread = (N + threads - 1) / threads;
    const int64_t fit = std::max<int64_t>(1, kGroupBytes / 4 / per_image);
    const int64_t groups_per_thread = (per_thread + fit - 1) / fit;
    G = (per_thread + groups_per_thread - 1) / groups_per_thread;
    if (N < threads) {
      // fewer images than threads: each image's rows in one band per thread it gets (a band
      // recomputes the expand rows of its depthwise halo). Whole images left a thread idle:
      // batch 1, 2 threads, the 14x14 and 7x7 blocks ran on one.
      R = (OH + threads / N - 1) / std::min(OH, threads / N);
    }
  }
  const int64_t bands = (OH + R - 1) / R;
  const int64_t segments = (G > 1 || N >= threads) ? 1 : std::min(bands, (threads + N - 1) / N);
  const int64_t bands_per_segment = (bands + segments - 1) / segments;
  const int64_t groups = (N + G - 1) / G;
  const int64_t cap_e = expand ? G * std::min(H, (R - 1) * sh + halo + 1) : 0;  // rows

  // The depthwise rows run through the depthwise family's channels_last row kernel
  // (depthwise_cpu_row_kernels.h: sliding register blocks, the input read in place and its
  // border through a row of zeros) wherever it slides; other shapes (dilation) run
  // depthwise_row below.
  const dw::Kernels<float>& isa = dw::kernels<float>();
  // The 1x1 convs (PointwiseConv): the expand conv's bias + activation, the project conv's bias
  // + residual in the GEMM's registers, on the caller's packed weights or ones packed here.
  std::optional<PointwiseConv> conv_e;
  if (expand) {
    conv_e.emplace(*w_expand, opt_ptr(be), Ch, Cin, static_cast<int>(expand_act), isa.lanes,
                   packed_expand);
  }
  const PointwiseConv conv_p(w_project, opt_ptr(bp), Cout, Ch, 0, isa.lanes, packed_project);
  // expand GEMM of the npos input positions from x_pos into dst (Ch channels a position)
  const auto expand_rows = [&](int64_t x_pos, int64_t npos, float* dst) {
    conv_e->run(xp + x_pos * Cin, npos, dst, nullptr, 0);
  };
  const bool slide = dwl == 1 && dw::slides(sw, kw) && Ch >= isa.lanes;
  const std::vector<float> zeros(slide ? Ch : 0, 0.0f);
  std::vector<int64_t> q(kw), wcol(kw);
  for (int64_t j = 0; j < kw; ++j) {
    q[j] = j;
    wcol[j] = j * Ch;
  }
  const DwGeom geom{W, Ch, OW, kh, kw, sw, pw, dwl};
  at::parallel_for(0, groups * segments, 1, [&](int64_t begin, int64_t end) {
    at::Tensor e_buf = expand ? at::empty({cap_e * W, Ch}, x.options()) : at::Tensor();
    at::Tensor d_buf = at::empty({G * R * OW, Ch}, x.options());
    float* ep = expand ? e_buf.mutable_data_ptr<float>() : nullptr;
    float* dp = d_buf.mutable_data_ptr<float>();
    std::vector<const float*> rows(kh + sh), wr(kh), scratch(2 * kh * kw);
    // Without an expand conv the depthwise rows read x in place, from memory (MobileNetV2's
    // first block: the stem's 8x32x112x112 output, 12.8 MB): the rows of x that the output row
    // kPrefetchAhead rows on first reads are prefetched, spread over this row's register blocks.
    // (With an expand conv, prefetching the x rows of the next band's expand GEMM the same way
    // measured no faster: blocks 2-5 of MobileNetV2 b8, op alone, 1 thread.)
    const int64_t blocks_per_row = (OW + 7) / 8 * ((Ch + isa.lanes - 1) / isa.lanes);
    // rows [r0, r1) of H (at most 8) whose row r is at src + r * row_floats
    const auto plan_prefetch = [&](dw::RowPrefetch& pf, const float* src, int64_t row_floats,
                                   int64_t r0, int64_t r1) {
      for (int64_t r = std::max<int64_t>(r0, 0); r < std::min(r1, H) && pf.nrows < 8; ++r) {
        pf.rows[pf.nrows++] = reinterpret_cast<const char*>(src + r * row_floats);
      }
      pf.npix = 1;  // a row's pixels are contiguous: one run of lines
      pf.pix_bytes = pf.pix_stride = row_floats * int64_t(sizeof(float));
      pf.per_step = int((pf.nrows * (pf.pix_bytes / 64 + 1) + blocks_per_row - 1) / blocks_per_row);
    };
    // depthwise output rows [o0, o1) of one image whose input row ih is at
    // base + (ih - first) * row, into dst, activation applied (by the row kernel in its
    // registers where it slides: a separate pass over the rows took 15-20% of their time)
    const auto dw_rows = [&](const float* base, int64_t first, int64_t o0, int64_t o1, float* dst) {
      for (int64_t oh = o0; oh < o1; ++oh) {
        float* out = dst + (oh - o0) * row_d;
        if (slide) {
          // Stride 2: two output rows a call where both have all kh source rows, the one they
          // share (2 * oh + 1 - ph) read once (NhwcRow::pair; C=96 112->56 rows 33.8 -> 35.8
          // GF/s, C=144 56->28 39.0 -> 42.0, thread CPU time, AVX-512, EPYC dev VM).
          const bool two = sh == 2 && dh == 1 && oh + 1 < o1 && oh * sh - ph >= 0 &&
                           (oh + 1) * sh - ph + kh - 1 < H;
          int nrows = 0;
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t ih = oh * sh - ph + i * dh;
            if (ih < 0 || ih >= H) continue;
            rows[nrows] = base + (ih - first) * row_e;
            wr[nrows++] = wtp + i * kw * Ch;
          }
          for (int64_t i = 0; two && i < sh; ++i) {  // the second row's last sh source rows
            rows[kh + i] = base + (oh * sh - ph + kh + i - first) * row_e;
          }
          dw::RowPrefetch pf;
          if (!expand) {  // base is x's image, first 0; with two rows, the rows of both
            const int64_t nout = two ? 2 : 1;
            // the last input row of the row kPrefetchAhead after this call's last
            const int64_t last = (oh + nout - 1 + kPrefetchAhead) * sh - ph + halo;
            plan_prefetch(pf, base, row_e, last - nout * sh + 1, last + 1);
          }
          dw::NhwcRow<float> a{rows.data(), wr.data(), nrows, q.data(), wcol.data(), int(kw),
                               sw, OW, out, Ch, Ch, Ch, bdp, scratch.data(),
                               pf.nrows > 0 ? &pf : nullptr};
          a.src_off = pw;
          a.src_pixels = W;
          a.zeros = zeros.data();
          a.act = static_cast<int>(dw_act);
          if (two) {
            a.pair = static_cast<int>(sh);
            a.dst2 = out + row_d;
            ++oh;
          }
          isa.nhwc_row(a);
          pf.finish();
        } else {
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t ih = oh * sh - ph + i * dh;
            rows[i] = (ih >= 0 && ih < H) ? base + (ih - first) * row_e : nullptr;
          }
          depthwise_row(rows.data(), geom, wtp, bdp, out);
        }
      }
      if (!slide && dw_act != 0) isa.apply_act(dst, (o1 - o0) * row_d, static_cast<int>(dw_act));
    };
    // project GEMM of npos depthwise positions into y's rows from position p0, + bias (+ x)
    const auto project = [&](int64_t p0, int64_t npos) {
      conv_p.run(dp, npos, yp + p0 * Cout, residual ? xp + p0 * Cin : nullptr, Cin);
    };
    for (int64_t item = begin; item < end; ++item) {
      const int64_t grp = item / segments, seg = item % segments;
      if (G > 1) {  // whole images n0 .. n0 + ng: one expand and one project GEMM
        const int64_t n0 = grp * G, ng = std::min(G, N - n0);
        const float* base = xp + n0 * H * W * Cin;
        if (expand) {
          expand_rows(n0 * H * W, ng * H * W, ep);
          base = ep;
        }
        for (int64_t g = 0; g < ng; ++g) dw_rows(base + g * H * row_e, 0, 0, OH, dp + g * OH * row_d);
        project(n0 * OH * OW, ng * OH * OW);
        continue;
      }
      const int64_t n = grp;
      const int64_t o_begin = seg * bands_per_segment * R;
      const int64_t o_end = std::min(OH, o_begin + bands_per_segment * R);
      const float* xn = xp + n * H * W * Cin;
      int64_t b0 = 0, b1 = 0;  // input rows held in e_buf: [b0, b1)
      for (int64_t o0 = o_begin; o0 < o_end; o0 += R) {
        const int64_t o1 = std::min(o0 + R, o_end);
        const int64_t need0 = std::max<int64_t>(0, o0 * sh - ph);
        const int64_t need1 = std::min(H, (o1 - 1) * sh - ph + halo + 1);
        const float* base = xn;  // row ih of the depthwise input: base + (ih - first) * row
        int64_t first = 0;
        if (expand) {
          int64_t fresh = need0;
          if (b0 <= need0 && need0 < b1) {  // keep the rows both bands read
            std::memmove(ep, ep + (need0 - b0) * row_e, (b1 - need0) * row_e * sizeof(float));
            fresh = b1;
          }
          b0 = need0;
          b1 = std::max(need1, fresh);
          if (fresh < need1) {
            expand_rows((n * H + fresh) * W, (need1 - fresh) * W, ep + (fresh - b0) * row_e);
          }
          base = ep;
          first = b0;
        }
        dw_rows(base, first, o0, o1, dp);
        project((n * OH + o0) * OW, (o1 - o0) * OW);
      }
    }
  });
  return y;
}

// w (N, K[, 1, 1]) float32 and bias (N,) or None packed for this CPU's pointwise GEMM:
// pw::packed_floats(N, K) floats (the layout: pointwise_cpu_gemm.h).
at::Tensor pointwise_pack(const at::Tensor& w, const std::optional<at::Tensor>& b) {
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.device().is_cpu() && w.dim() >= 2 &&
                  w.numel() == w.size(0) * w.size(1),
              "pointwise_pack: w must be a float32 CPU (N, K) or (N, K, 1, 1) tensor");
  const int64_t N = w.size(0), K = w.size(1);
  const auto bias = contiguous_vector(b, N, "b", "pointwise_pack");
  at::Tensor out = at::empty({pw::packed_floats(N, K)}, w.options());
  const at::Tensor wc = w.contiguous();
  pw::pack_weights(wc.const_data_ptr<float>(), opt_ptr(bias), N, K,
                   pw::gemm_lanes(dw::kernels<float>().lanes, N), out.mutable_data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastblocks_C, CPU, m) {
  m.impl("inverted_residual_forward", &inverted_residual_forward);
  m.impl("pointwise_pack", &pointwise_pack);
}

}  // namespace fastblocks::cpu
