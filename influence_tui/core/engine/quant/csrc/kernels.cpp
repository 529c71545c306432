// Matrix kernels for decoding on CPU: y = x @ W.T (+ bias) with W kept packed (see quant/packed.py for the
// layouts). Activations and accumulation are float32; each weight is expanded to float32 in registers and
// never written back, so a decode step reads each packed byte once.
//
// x is [M, K] float32, y is [M, N] float32. Rows of W are split over threads (at::parallel_for, the same
// OpenMP pool torch uses). Up to MR activation rows share each expanded weight block, so a short prompt reads
// the weights once per MR rows; longer prompts expand W to float32 once and use torch's GEMM.
//
// Built with -march=native: on AVX-512 CPUs the AVX-512 paths run; elsewhere the portable loops below them
// (which the compiler vectorizes for what the CPU has).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define INFLUENCE_AVX512 1
#else
#define INFLUENCE_AVX512 0
#endif

namespace {

constexpr int MR = 4;  // activation rows per weight pass
constexpr int64_t GEMM_ROWS = 16;  // above this many rows, expand W and use torch's GEMM

inline float half_to_float(uint16_t h) {
#if INFLUENCE_AVX512
  return _cvtsh_ss(h);
#else
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
#endif
}

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

enum class Kind { Q4, Q8, F16, BF16, F32 };

struct Packed {
  Kind kind;
  const void* q;          // codes / plain weights, row-major
  const uint16_t* scales;  // [N, K / group] float16 bits, or null
  const uint16_t* mins;    // [N, K / group] float16 bits, or null
  int64_t n, k, group;

  int64_t row_bytes() const {
    switch (kind) {
      case Kind::Q4: return k / 2;
      case Kind::Q8: return k;
      case Kind::F16:
      case Kind::BF16: return 2 * k;
      default: return 4 * k;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------
// Portable reference of one output: sum_k W[n, k] * x[k], the row expanded the same way as the vector code.

void row_dot_portable(const Packed& w, int64_t n, const float* const* xs, int m_rows, float* out) {
  const int64_t k = w.k;
  const int64_t groups = w.group ? k / w.group : 0;
  for (int m = 0; m < m_rows; ++m) out[m] = 0.f;
  if (w.kind == Kind::F32 || w.kind == Kind::F16 || w.kind == Kind::BF16) {
    for (int m = 0; m < m_rows; ++m) {
      float acc = 0.f;
      for (int64_t i = 0; i < k; ++i) {
        float v;
        if (w.kind == Kind::F32) v = static_cast<const float*>(w.q)[n * k + i];
        else if (w.kind == Kind::F16) v = half_to_float(static_cast<const uint16_t*>(w.q)[n * k + i]);
        else v = bf16_to_float(static_cast<const uint16_t*>(w.q)[n * k + i]);
        acc += v * xs[m][i];
      }
      out[m] = acc;
    }
    return;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const float scale = half_to_float(w.scales[n * groups + g]);
    const float mn = w.mins ? half_to_float(w.mins[n * groups + g]) : 0.f;
    float codes[32];
    if (w.kind == Kind::Q4) {
      const uint8_t* b = static_cast<const uint8_t*>(w.q) + n * (k / 2) + g * 16;
      for (int j = 0; j < 16; ++j) {
        codes[j] = static_cast<float>(b[j] & 0x0F);
        codes[j + 16] = static_cast<float>(b[j] >> 4);
      }
      if (!w.mins)
        for (int j = 0; j < 32; ++j) codes[j] -= 8.f;
    } else {
      const int8_t* b = static_cast<const int8_t*>(w.q) + n * k + g * w.group;
      for (int j = 0; j < w.group; ++j) codes[j] = static_cast<float>(b[j]);
    }
    for (int m = 0; m < m_rows; ++m) {
      const float* x = xs[m] + g * w.group;
      float dot = 0.f, xsum = 0.f;
      for (int j = 0; j < w.group; ++j) {
        dot += codes[j] * x[j];
        xsum += x[j];
      }
      out[m] += scale * dot + mn * xsum;
    }
  }
}

#if INFLUENCE_AVX512
// ---------------------------------------------------------------------------------------------------------
// AVX-512: per block, the codes become float32 vectors; each activation row accumulates codes . x per block,
// scaled once per block (acc += scale * dot); the mins term is sum_g min_g * sum(x in block g), taken from
// per-block sums of x computed once per call.

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// out[r] += sum_g min_g * xsum_r[g]: the mins term of an asymmetric row, 16 blocks per step.
template <int R>
inline void add_mins(const uint16_t* mn, int64_t groups, const float* const* xsums, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 16 <= groups; g += 16) {
    const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mn + g)));
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(m, _mm512_loadu_ps(xsums[r] + g), acc[r]);
  }
  if (g < groups) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (groups - g)) - 1);
    const __m512 m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, mn + g));
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(tail, xsums[r] + g), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] += hsum(acc[r]);
}

template <int R>
void row_dot_q4(const Packed& w, int64_t n, const float* const* xs, const float* const* xsums, float* out) {
  const int64_t groups = w.k / 32;
  const uint8_t* q = static_cast<const uint8_t*>(w.q) + n * (w.k / 2);
  const uint16_t* sc = w.scales + n * groups;
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i eight = _mm_set1_epi8(8);
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const bool sym = w.mins == nullptr;
  for (int64_t g = 0; g < groups; ++g) {
    __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 16));
    __m128i lo = _mm_and_si128(bytes, low);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low);
    __m512 wlo, whi;
    if (sym) {
      wlo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(lo, eight)));
      whi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(hi, eight)));
    } else {
      wlo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo));
      whi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
    }
    const __m512 s = _mm512_set1_ps(_cvtsh_ss(sc[g]));
    for (int r = 0; r < R; ++r) {
      const float* x = xs[r] + g * 32;
      __m512 d = _mm512_mul_ps(wlo, _mm512_loadu_ps(x));
      d = _mm512_fmadd_ps(whi, _mm512_loadu_ps(x + 16), d);
      acc[r] = _mm512_fmadd_ps(d, s, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
  if (!sym) add_mins<R>(w.mins + n * groups, groups, xsums, out);
}

template <int R>
void row_dot_q8(const Packed& w, int64_t n, const float* const* xs, const float* const* xsums, float* out) {
  const int64_t groups = w.k / w.group;
  const int8_t* q = static_cast<const int8_t*>(w.q) + n * w.k;
  const uint16_t* sc = w.scales + n * groups;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  if (w.group == 32) {
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 32))));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 32 + 16))));
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(sc[g]));
      for (int r = 0; r < R; ++r) {
        const float* x = xs[r] + g * 32;
        __m512 d = _mm512_mul_ps(w0, _mm512_loadu_ps(x));
        d = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), d);
        acc[r] = _mm512_fmadd_ps(d, s, acc[r]);
      }
    }
  } else {  // group 16
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 16))));
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(sc[g]));
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(w0, _mm512_loadu_ps(xs[r] + g * 16)), s, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
  if (w.mins) add_mins<R>(w.mins + n * groups, groups, xsums, out);
}

template <int R>
void row_dot_plain(const Packed& w, int64_t n, const float* const* xs, float* out) {
  const int64_t k = w.k;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m512 v;
    if (w.kind == Kind::F16) {
      v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w.q) + n * k + i)));
    } else if (w.kind == Kind::BF16) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w.q) + n * k + i));
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
    } else {
      v = _mm512_loadu_ps(static_cast<const float*>(w.q) + n * k + i);
    }
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(v, _mm512_loadu_ps(xs[r] + i), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
  for (; i < k; ++i) {
    float v;
    if (w.kind == Kind::F16) v = half_to_float(static_cast<const uint16_t*>(w.q)[n * k + i]);
    else if (w.kind == Kind::BF16) v = bf16_to_float(static_cast<const uint16_t*>(w.q)[n * k + i]);
    else v = static_cast<const float*>(w.q)[n * k + i];
    for (int r = 0; r < R; ++r) out[r] += v * xs[r][i];
  }
}

template <int R>
void row_dot(const Packed& w, int64_t n, const float* const* xs, const float* const* xsums, float* out) {
  switch (w.kind) {
    case Kind::Q4: row_dot_q4<R>(w, n, xs, xsums, out); break;
    case Kind::Q8: row_dot_q8<R>(w, n, xs, xsums, out); break;
    default: row_dot_plain<R>(w, n, xs, out); break;
  }
}
#endif

// One chunk of up to MR activation rows against weight rows [n0, n1).
void rows_chunk(const Packed& w, const float* x, const float* xsum, float* y, int64_t m0, int mr, int64_t n0, int64_t n1) {
  const int64_t groups = w.group ? w.k / w.group : 0;
  const float* xs[MR];
  const float* sums[MR];
  for (int r = 0; r < mr; ++r) {
    xs[r] = x + (m0 + r) * w.k;
    sums[r] = xsum ? xsum + (m0 + r) * groups : nullptr;
  }
  const int64_t out_n = w.n;
  float out[MR];
  for (int64_t n = n0; n < n1; ++n) {
#if INFLUENCE_AVX512
    if (w.k % 16 == 0) {
      switch (mr) {
        case 1: row_dot<1>(w, n, xs, sums, out); break;
        case 2: row_dot<2>(w, n, xs, sums, out); break;
        case 3: row_dot<3>(w, n, xs, sums, out); break;
        default: row_dot<4>(w, n, xs, sums, out); break;
      }
    } else {
      row_dot_portable(w, n, xs, mr, out);
    }
#else
    row_dot_portable(w, n, xs, mr, out);
#endif
    for (int r = 0; r < mr; ++r) y[(m0 + r) * out_n + n] = out[r];
  }
}

Kind kind_of(const std::string& name) {
  if (name == "q4") return Kind::Q4;
  if (name == "q8") return Kind::Q8;
  if (name == "f16") return Kind::F16;
  if (name == "bf16") return Kind::BF16;
  if (name == "f32") return Kind::F32;
  TORCH_CHECK(false, "unknown packed kind ", name);
}

Packed make_packed(const std::string& kind, const torch::Tensor& qweight, const c10::optional<torch::Tensor>& scales,
                   const c10::optional<torch::Tensor>& mins, int64_t k, int64_t group) {
  TORCH_CHECK(qweight.is_contiguous() && qweight.device().is_cpu(), "qweight must be a contiguous CPU tensor");
  Packed w{};
  w.kind = kind_of(kind);
  w.q = qweight.data_ptr();
  w.n = qweight.size(0);
  w.k = k;
  w.group = 0;
  if (w.kind == Kind::Q4 || w.kind == Kind::Q8) {
    TORCH_CHECK(scales.has_value() && scales->scalar_type() == torch::kHalf && scales->is_contiguous(), "float16 scales needed");
    TORCH_CHECK(group == 16 || group == 32, "block size must be 16 or 32");
    TORCH_CHECK(k % group == 0 && (w.kind != Kind::Q4 || group == 32), "bad block size for K");
    TORCH_CHECK(scales->size(0) == w.n && scales->size(1) == k / group, "scales must be [N, K / group]");
    w.group = group;
    w.scales = reinterpret_cast<const uint16_t*>(scales->data_ptr());
    if (mins.has_value()) {
      TORCH_CHECK(mins->scalar_type() == torch::kHalf && mins->is_contiguous() && mins->sizes() == scales->sizes(), "mins must match scales");
      w.mins = reinterpret_cast<const uint16_t*>(mins->data_ptr());
    }
  }
  TORCH_CHECK(qweight.nbytes() == static_cast<size_t>(w.n * w.row_bytes()), "qweight has the wrong size for kind ", kind);
  return w;
}

torch::Tensor dequantize_impl(const Packed& w) {
  auto out = torch::empty({w.n, w.k}, torch::kFloat32);
  float* o = out.data_ptr<float>();
  const int64_t groups = w.group ? w.k / w.group : 0;
  at::parallel_for(0, w.n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* row = o + n * w.k;
      if (w.kind == Kind::Q4) {
        const uint8_t* b = static_cast<const uint8_t*>(w.q) + n * (w.k / 2);
        for (int64_t g = 0; g < groups; ++g) {
          const float s = half_to_float(w.scales[n * groups + g]);
          const float mn = w.mins ? half_to_float(w.mins[n * groups + g]) : -8.f * s;
          for (int j = 0; j < 16; ++j) {
            row[g * 32 + j] = s * static_cast<float>(b[g * 16 + j] & 0x0F) + mn;
            row[g * 32 + j + 16] = s * static_cast<float>(b[g * 16 + j] >> 4) + mn;
          }
        }
      } else if (w.kind == Kind::Q8) {
        const int8_t* b = static_cast<const int8_t*>(w.q) + n * w.k;
        for (int64_t g = 0; g < groups; ++g) {
          const float s = half_to_float(w.scales[n * groups + g]);
          const float mn = w.mins ? half_to_float(w.mins[n * groups + g]) : 0.f;
          for (int64_t j = 0; j < w.group; ++j) row[g * w.group + j] = s * static_cast<float>(b[g * w.group + j]) + mn;
        }
      } else if (w.kind == Kind::F16) {
        const uint16_t* b = static_cast<const uint16_t*>(w.q) + n * w.k;
        for (int64_t i = 0; i < w.k; ++i) row[i] = half_to_float(b[i]);
      } else if (w.kind == Kind::BF16) {
        const uint16_t* b = static_cast<const uint16_t*>(w.q) + n * w.k;
        for (int64_t i = 0; i < w.k; ++i) row[i] = bf16_to_float(b[i]);
      } else {
        std::memcpy(row, static_cast<const float*>(w.q) + n * w.k, sizeof(float) * w.k);
      }
    }
  });
  return out;
}

}  // namespace

// y = x @ W.T + bias for a packed W. x: [..., K] float32 (any leading shape). Returns [..., N] float32.
torch::Tensor packed_linear(const torch::Tensor& x_in, const std::string& kind, const torch::Tensor& qweight,
                            const c10::optional<torch::Tensor>& scales, const c10::optional<torch::Tensor>& mins,
                            int64_t group, const c10::optional<torch::Tensor>& bias) {
  const int64_t k = x_in.size(-1);
  Packed w = make_packed(kind, qweight, scales, mins, k, group);
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32, "activations must be float32");
  auto x = x_in.reshape({-1, k}).contiguous();
  const int64_t m = x.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = w.n;
  if (m > GEMM_ROWS) {
    auto wf = dequantize_impl(w);
    auto y = bias.has_value() ? at::addmm(bias->to(torch::kFloat32), x, wf.t()) : at::mm(x, wf.t());
    return y.reshape(out_shape);
  }
  auto y = torch::empty({m, w.n}, torch::kFloat32);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Per-block sums of x, for the mins term.
  std::vector<float> xsum;
  if (w.mins) {
    const int64_t groups = k / w.group;
    xsum.resize(m * groups);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        float s = 0.f;
        for (int64_t j = 0; j < w.group; ++j) s += xp[r * k + g * w.group + j];
        xsum[r * groups + g] = s;
      }
  }
  const float* xs = w.mins ? xsum.data() : nullptr;
  // Enough rows per task that a thread reads at least ~16 KiB of weights: tiny layers stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(1, w.row_bytes()));
  at::parallel_for(0, w.n, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < m; m0 += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, m - m0));
      rows_chunk(w, xp, xs, yp, m0, mr, n0, n1);
    }
  });
  if (bias.has_value()) y.add_(bias->to(torch::kFloat32));
  return y.reshape(out_shape);
}

torch::Tensor packed_dequantize(const std::string& kind, const torch::Tensor& qweight, const c10::optional<torch::Tensor>& scales,
                                const c10::optional<torch::Tensor>& mins, int64_t k, int64_t group) {
  return dequantize_impl(make_packed(kind, qweight, scales, mins, k, group));
}

bool has_avx512() { return INFLUENCE_AVX512 != 0; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "y = x @ W.T + bias with W packed");
  m.def("packed_dequantize", &packed_dequantize, "W as float32");
  m.def("has_avx512", &has_avx512, "whether the AVX-512 paths were compiled in");
}
