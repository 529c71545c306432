// Matrix kernels for decoding on CPU: y = x @ W.T (+ bias) with W kept packed (see quant/packed.py for the
// layouts). Activations and accumulation are float32; each weight is expanded to float32 in registers and
// never written back, so a decode step reads each packed byte once.
//
// x is [M, K] float32, y is [M, N] float32. Rows of W are split over threads (at::parallel_for, the same
// OpenMP pool torch uses). Up to MR activation rows (VMR on the integer-dot path, a batched decode step's
// rows) share each expanded weight block, so a short prompt or a batch of decoding sequences reads the weights
// once per MR rows; longer prompts expand W to float32 once and use torch's GEMM.
//
// Built with -march=native: on AVX-512 CPUs the AVX-512 paths run; elsewhere the portable loops below them
// (which the compiler vectorizes for what the CPU has).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define INFLUENCE_AVX512 1
#else
#define INFLUENCE_AVX512 0
#endif

namespace {

constexpr int MR = 4;  // activation rows per weight pass
constexpr int VMR = 8;  // activation rows per weight pass of the integer-dot path (a batched decode step's rows)
constexpr int64_t GEMM_ROWS = 16;  // above this many rows, expand W and use torch's GEMM
constexpr int PREFETCH_BYTES = 2048;  // how far ahead the integer-dot loops ask for weight bytes (tuned on Zen 4)

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
  const char* row_start = static_cast<const char*>(w.q) + n * w.row_bytes();
  const int64_t elem = w.row_bytes() / k;
  for (; i + 16 <= k; i += 16) {
    if ((i & 31) == 0) _mm_prefetch(row_start + i * elem + PREFETCH_BYTES, _MM_HINT_T0);
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


#if INFLUENCE_AVX512 && defined(__AVX512VNNI__)
#define INFLUENCE_VNNI 1
// ---------------------------------------------------------------------------------------------------------
// Decode (one activation row) with integer dot products, as llama.cpp does: x is quantized to int8 per block
// of 32 (scale absmax / 127), each block's codes . x_q is summed exactly in int32 by VPDPBUSD, then scaled
// by d_w * d_x in float. The mins (or Q4_0's -8 offset) term uses the float sums of x. Compared with
// expanding every weight to float this is about three times fewer instructions per weight, which is what
// lets two cores read 4-bit weights near memory bandwidth.

struct QuantX {
  std::vector<int8_t> q;      // [K] codes (q8 layout), or the q4 layout: first halves then second halves of blocks
  std::vector<int8_t> qhi;    // q4 only: second halves of blocks, [K / 2]
  std::vector<float> scale;   // [K / 32 + 16], padded with zeros
  std::vector<float> sum;     // float sums of x per weight block (for mins / offsets), padded
  std::vector<float> spread;  // per 64 bytes of a weight row, 16 lanes: the scale of the x block each lane meets
};

void quantize_x(const float* x, int64_t k, bool q4_layout, int64_t group, QuantX& out) {
  const int64_t blocks = k / 32;
  out.q.assign(q4_layout ? k / 2 + 64 : k + 64, 0);
  if (q4_layout) out.qhi.assign(k / 2 + 64, 0);
  out.scale.assign(blocks + 16, 0.f);
  out.sum.assign(k / group + 16, 0.f);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * 32;
    const __m512 a0 = _mm512_loadu_ps(xb), a1 = _mm512_loadu_ps(xb + 16);
    const float amax = std::max(_mm512_reduce_max_ps(_mm512_abs_ps(a0)), _mm512_reduce_max_ps(_mm512_abs_ps(a1)));
    const float d = amax / 127.f;
    out.scale[b] = d;
    const __m512 inv = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f);
    const __m128i c0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(a0, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
    const __m128i c1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(a1, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
    if (q4_layout) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + b * 16), c0);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.qhi.data() + b * 16), c1);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + b * 32), c0);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + b * 32 + 16), c1);
    }
  }
  for (int64_t g = 0; g < k / group; ++g) {
    float t = 0.f;
    for (int64_t j = 0; j < group; ++j) t += x[g * group + j];
    out.sum[g] = t;
  }
  // A 64-byte load of q4 codes holds 4 blocks (lane j: block j / 4); of q8 codes, 64 values (lane j: block j / 8).
  const int64_t chunks = q4_layout ? (blocks + 3) / 4 : (k + 63) / 64;
  out.spread.assign((chunks + 1) * 16, 0.f);
  for (int64_t c = 0; c < chunks; ++c)
    for (int j = 0; j < 16; ++j) out.spread[c * 16 + j] = out.scale[q4_layout ? 4 * c + j / 4 : 2 * c + j / 8];
}

// acc[r] += c_g * xsum_r[g] lane by lane (summed with the rest at the end), c_g = factor * v_g: the mins, or
// -8 * scale for symmetric q4.
template <int R>
inline void add_offsets(const uint16_t* v, float factor, int64_t groups, const QuantX* const* xq, __m512* acc) {
  const __m512 f = _mm512_set1_ps(factor);
  for (int64_t g = 0; g < groups; g += 16) {
    const __mmask16 m = groups - g >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (groups - g)) - 1);
    const __m512 c = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v + g)), f);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m, xq[r]->sum.data() + g), acc[r]);
  }
}

// Lane j of the result is s[j / 4] (four blocks of 32 bytes' worth of VPDPBUSD lanes each) or s[j / 8].
inline __m512 spread4(__m128 s) {
  const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s));
}

inline __m128 half4(const uint16_t* p, int64_t n) {
  const __mmask8 m = static_cast<__mmask8>((1u << n) - 1);
  return _mm_cvtph_ps(_mm_maskz_loadu_epi16(m, p));
}

// out[r] = the sum of acc[r]'s lanes for R <= 8 accumulators, by one tree for all of them (pairs of lanes 8
// apart, then 4, 2, 1: the order _mm512_reduce_add_ps takes). A row's sum is the same whatever R and its
// neighbours; summing R rows together costs about a third of R separate reductions.
template <int R>
inline void reduce_rows(const __m512* acc, float* out) {
  static_assert(R >= 1 && R <= 8, "up to 8 rows");
  __m512 a[8];
  for (int r = 0; r < 8; ++r) a[r] = r < R ? acc[r] : _mm512_setzero_ps();
  __m512 u[4], w[2];
  for (int i = 0; i < 4; ++i)  // lanes 0-7: row 2i's lane j + lane j+8; lanes 8-15: row 2i+1's
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // block k: row 4i+k's four partial sums (j + j+4)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  // block k: [w0 row k: j + j+2 for j = 0, 1; w1 row k: the same]
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x44), _mm512_shuffle_ps(w[0], w[1], 0xEE));
  const __m512 s = _mm512_add_ps(z, _mm512_shuffle_ps(z, z, 0xB1));  // lane 4k: row k's sum, lane 4k+2: row 4+k's
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  for (int r = 0; r < R; ++r) out[r] = lanes[r < 4 ? 4 * r : 4 * (r - 4) + 2];
}

template <int R>
void row_q4_vnni(const Packed& w, int64_t n, const QuantX* const* xq, float* out) {
  const int64_t groups = w.k / 32;
  const uint8_t* q = static_cast<const uint8_t*>(w.q) + n * (w.k / 2);
  const uint16_t* sc = w.scales + n * groups;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0, c = 0; g < groups; g += 4, ++c) {
    const int64_t nb = std::min<int64_t>(4, groups - g);
    const __mmask64 m = nb == 4 ? ~__mmask64(0) : ((__mmask64(1) << (16 * nb)) - 1);
    _mm_prefetch(reinterpret_cast<const char*>(q + g * 16) + PREFETCH_BYTES, _MM_HINT_T0);
    const __m512i bytes = _mm512_maskz_loadu_epi8(m, q + g * 16);
    const __m512i lo = _mm512_and_si512(bytes, low);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low);
    const __m512 d = spread4(half4(sc + g, nb));
    for (int r = 0; r < R; ++r) {
      __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq[r]->q.data() + g * 16));
      dot = _mm512_dpbusd_epi32(dot, hi, _mm512_loadu_si512(xq[r]->qhi.data() + g * 16));
      const __m512 s = _mm512_mul_ps(d, _mm512_loadu_ps(xq[r]->spread.data() + 16 * c));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
    }
  }
  if (w.mins) add_offsets<R>(w.mins + n * groups, 1.f, groups, xq, acc);
  else add_offsets<R>(sc, -8.f, groups, xq, acc);
  reduce_rows<R>(acc, out);
}

template <int R>
void row_q8_vnni(const Packed& w, int64_t n, const QuantX* const* xq, float* out) {
  const int64_t groups = w.k / w.group;
  const int8_t* q = static_cast<const int8_t*>(w.q) + n * w.k;
  const uint16_t* sc = w.scales + n * groups;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t per = 64 / w.group;  // weight blocks per 64 bytes: 2 (group 32) or 4 (group 16)
  const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int64_t g = 0, c = 0; g < groups; g += per, ++c) {
    const int64_t nb = std::min<int64_t>(per, groups - g);
    const __mmask64 m = nb == per ? ~__mmask64(0) : ((__mmask64(1) << (w.group * nb)) - 1);
    _mm_prefetch(reinterpret_cast<const char*>(q + g * w.group) + PREFETCH_BYTES, _MM_HINT_T0);
    const __m512i wv = _mm512_maskz_loadu_epi8(m, q + g * w.group);
    const __mmask64 negative = _mm512_movepi8_mask(wv);
    const __m512i wabs = _mm512_abs_epi8(wv);
    const __m128 d4 = half4(sc + g, nb);
    const __m512 d = w.group == 32 ? _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(d4)) : spread4(d4);
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_maskz_loadu_epi8(m, xq[r]->q.data() + g * w.group);
      // VPDPBUSD multiplies unsigned by signed: |w| times x with w's sign moved onto x.
      const __m512i xs = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wabs, xs);
      const __m512 s = _mm512_mul_ps(d, _mm512_loadu_ps(xq[r]->spread.data() + 16 * c));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[r]);
    }
  }
  if (w.mins) add_offsets<R>(w.mins + n * groups, 1.f, groups, xq, acc);
  reduce_rows<R>(acc, out);
}

template <int R>
inline void row_vnni(const Packed& w, int64_t n, const QuantX* const* xq, float* out) {
  if (w.kind == Kind::Q4) row_q4_vnni<R>(w, n, xq, out);
  else row_q8_vnni<R>(w, n, xq, out);
}

#else
#define INFLUENCE_VNNI 0
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
                            int64_t group, const c10::optional<torch::Tensor>& bias, bool integer_dot) {
  const int64_t k = x_in.size(-1);
  Packed w = make_packed(kind, qweight, scales, mins, k, group);
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32, "activations must be float32");
  auto x = x_in.reshape({-1, k}).contiguous();
  const int64_t m = x.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = w.n;
  const bool integer_path = INFLUENCE_VNNI && integer_dot && (w.kind == Kind::Q4 || w.kind == Kind::Q8) && k % 32 == 0;
  if (m > GEMM_ROWS && w.kind == Kind::F32) {
    auto wf = torch::from_blob(const_cast<void*>(w.q), {w.n, k}, torch::kFloat32);
    auto y = bias.has_value() ? at::addmm(bias->to(torch::kFloat32), x, wf.t()) : at::mm(x, wf.t());
    return y.reshape(out_shape);
  }
  if (m > GEMM_ROWS && !integer_path && (w.kind == Kind::Q4 || w.kind == Kind::Q8)) {
    auto wf = dequantize_impl(w);
    auto y = bias.has_value() ? at::addmm(bias->to(torch::kFloat32), x, wf.t()) : at::mm(x, wf.t());
    return y.reshape(out_shape);
  }
  auto y = torch::empty({m, w.n}, torch::kFloat32);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#if INFLUENCE_VNNI
  if (integer_dot && (w.kind == Kind::Q4 || w.kind == Kind::Q8) && k % 32 == 0) {
    std::vector<QuantX> xq(m);
    for (int64_t r = 0; r < m; ++r) quantize_x(xp + r * k, k, w.kind == Kind::Q4, w.group, xq[r]);
    const int64_t grain = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(1, w.row_bytes() * ((m + VMR - 1) / VMR)));
    at::parallel_for(0, w.n, grain, [&](int64_t n0, int64_t n1) {
      const QuantX* rows[VMR];
      float out[VMR];
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m0 = 0; m0 < m; m0 += VMR) {
          const int mr = static_cast<int>(std::min<int64_t>(VMR, m - m0));
          for (int r = 0; r < mr; ++r) rows[r] = &xq[m0 + r];
          switch (mr) {
            case 1: row_vnni<1>(w, n, rows, out); break;
            case 2: row_vnni<2>(w, n, rows, out); break;
            case 3: row_vnni<3>(w, n, rows, out); break;
            case 4: row_vnni<4>(w, n, rows, out); break;
            case 5: row_vnni<5>(w, n, rows, out); break;
            case 6: row_vnni<6>(w, n, rows, out); break;
            case 7: row_vnni<7>(w, n, rows, out); break;
            default: row_vnni<8>(w, n, rows, out); break;
          }
          for (int r = 0; r < mr; ++r) yp[(m0 + r) * w.n + n] = out[r];
        }
    });
    if (bias.has_value()) y.add_(bias->to(torch::kFloat32));
    return y.reshape(out_shape);
  }
#endif
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
  // Weight rows in blocks that stay in L2 while every chunk of activation rows passes over them.
  const int64_t block = std::max<int64_t>(1, (256 * 1024) / std::max<int64_t>(1, w.row_bytes()));
  at::parallel_for(0, w.n, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
      const int64_t b1 = std::min(n1, b0 + block);
      for (int64_t m0 = 0; m0 < m; m0 += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, m - m0));
        rows_chunk(w, xp, xs, yp, m0, mr, b0, b1);
      }
    }
  });
  if (bias.has_value()) y.add_(bias->to(torch::kFloat32));
  return y.reshape(out_shape);
}

torch::Tensor packed_dequantize(const std::string& kind, const torch::Tensor& qweight, const c10::optional<torch::Tensor>& scales,
                                const c10::optional<torch::Tensor>& mins, int64_t k, int64_t group) {
  return dequantize_impl(make_packed(kind, qweight, scales, mins, k, group));
}

// ---------------------------------------------------------------------------------------------------------
// Fused steps of a llama-style decoder layer, each one call instead of several torch ops. All float32.

// RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension.
torch::Tensor rms_norm(const torch::Tensor& x_in, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32, "rms_norm takes float32");
  const int64_t h = x_in.size(-1);
  TORCH_CHECK(weight.numel() == h, "weight must have the hidden size");
  auto x = x_in.contiguous();
  auto w = weight.contiguous();
  auto y = torch::empty_like(x);
  const int64_t rows = x.numel() / h;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * h;
    float* yr = yp + r * h;
    double ss = 0.0;
    for (int64_t i = 0; i < h; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(h) + eps));
    for (int64_t i = 0; i < h; ++i) yr[i] = wp[i] * (xr[i] * inv);
  }
  return y;
}

// Split a fused q|k|v projection [B, T, (H + 2 KV) * D] into q [B, H, T, D], k and v [B, KV, T, D], applying
// the rotary embedding (transformers' rotate_half convention, cos/sin [B or 1, T, D]) to q and k.
std::vector<torch::Tensor> qkv_rope(const torch::Tensor& qkv_in, const torch::Tensor& cos_in, const torch::Tensor& sin_in,
                                    int64_t heads, int64_t kv_heads, int64_t dim) {
  TORCH_CHECK(qkv_in.dim() == 3 && qkv_in.scalar_type() == torch::kFloat32, "qkv must be float32 [B, T, F]");
  const int64_t b = qkv_in.size(0), t = qkv_in.size(1);
  TORCH_CHECK(qkv_in.size(2) == (heads + 2 * kv_heads) * dim && dim % 2 == 0, "qkv width does not match the heads");
  auto qkv = qkv_in.contiguous();
  auto cos = cos_in.to(torch::kFloat32).contiguous();
  auto sin = sin_in.to(torch::kFloat32).contiguous();
  TORCH_CHECK(cos.dim() == 3 && cos.size(1) == t && cos.size(2) == dim && (cos.size(0) == b || cos.size(0) == 1), "cos must be [B, T, D]");
  auto q = torch::empty({b, heads, t, dim}, torch::kFloat32);
  auto k = torch::empty({b, kv_heads, t, dim}, torch::kFloat32);
  auto v = torch::empty({b, kv_heads, t, dim}, torch::kFloat32);
  const float* src = qkv.data_ptr<float>();
  const int64_t width = (heads + 2 * kv_heads) * dim, half = dim / 2;
  for (int64_t bi = 0; bi < b; ++bi) {
    const int64_t cb = cos.size(0) == 1 ? 0 : bi;
    for (int64_t ti = 0; ti < t; ++ti) {
      const float* row = src + (bi * t + ti) * width;
      const float* c = cos.data_ptr<float>() + (cb * t + ti) * dim;
      const float* sn = sin.data_ptr<float>() + (cb * t + ti) * dim;
      for (int64_t hd = 0; hd < heads + kv_heads; ++hd) {
        const float* x = row + hd * dim;
        float* out = hd < heads ? q.data_ptr<float>() + ((bi * heads + hd) * t + ti) * dim
                                : k.data_ptr<float>() + ((bi * kv_heads + (hd - heads)) * t + ti) * dim;
        for (int64_t i = 0; i < half; ++i) {
          out[i] = x[i] * c[i] - x[i + half] * sn[i];
          out[i + half] = x[i + half] * c[i + half] + x[i] * sn[i + half];
        }
      }
      for (int64_t hd = 0; hd < kv_heads; ++hd)
        std::memcpy(v.data_ptr<float>() + ((bi * kv_heads + hd) * t + ti) * dim, row + (heads + kv_heads + hd) * dim, sizeof(float) * dim);
    }
  }
  return {q, k, v};
}

// Attention of one new position over a cache, for one (sequence, head): scores, softmax, weighted values.
// Every (sequence, head) is computed by itself, in the same order whatever the batch or thread count, so a
// sequence's output in a batch is bit for bit its output alone.

#if INFLUENCE_AVX512
// exp(x) (Cephes' expf polynomial, about 1 ulp; x clamped to [-87.3, 88]): x = n ln 2 + r, e^r by a degree-6
// polynomial.
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}
#endif

// q: [dim]; key j at kb + j * ks, value j at vb + j * vs; scores: scratch of len floats; o: [dim].
void attend_one(const float* q, const float* kb, int64_t ks, const float* vb, int64_t vs, int64_t len, int64_t dim,
                float sc, float* scores, float* o) {
#if INFLUENCE_AVX512
  if (dim % 16 == 0 && dim <= 256) {
    const int64_t nv = dim / 16;
    __m512 qr[16], acc[16];
    for (int64_t i = 0; i < nv; ++i) qr[i] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * i), _mm512_set1_ps(sc));
    float mx = -INFINITY;
    for (int64_t j = 0; j < len; ++j) {
      const float* kr = kb + j * ks;
      __m512 d = _mm512_mul_ps(qr[0], _mm512_loadu_ps(kr));
      for (int64_t i = 1; i < nv; ++i) d = _mm512_fmadd_ps(qr[i], _mm512_loadu_ps(kr + 16 * i), d);
      const float s = _mm512_reduce_add_ps(d);
      scores[j] = s;
      mx = std::max(mx, s);
    }
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 tot = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
      const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(scores + j), vmx));
      _mm512_storeu_ps(scores + j, e);
      tot = _mm512_add_ps(tot, e);
    }
    if (j < len) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (len - j)) - 1);
      const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, scores + j), vmx));
      _mm512_mask_storeu_ps(scores + j, tail, e);
      tot = _mm512_add_ps(tot, _mm512_maskz_mov_ps(tail, e));
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(tot));
    for (int64_t i = 0; i < nv; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t jj = 0; jj < len; ++jj) {
      const __m512 p = _mm512_set1_ps(scores[jj]);
      const float* vr = vb + jj * vs;
      for (int64_t i = 0; i < nv; ++i) acc[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vr + 16 * i), acc[i]);
    }
    for (int64_t i = 0; i < nv; ++i) _mm512_storeu_ps(o + 16 * i, _mm512_mul_ps(acc[i], inv));
    return;
  }
#endif
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) {
    const float* kr = kb + j * ks;
    float d = 0.f;
    for (int64_t i = 0; i < dim; ++i) d += q[i] * kr[i];
    scores[j] = d * sc;
    mx = std::max(mx, scores[j]);
  }
  float total = 0.f;
  for (int64_t j = 0; j < len; ++j) {
    scores[j] = std::exp(scores[j] - mx);
    total += scores[j];
  }
  for (int64_t i = 0; i < dim; ++i) o[i] = 0.f;
  for (int64_t j = 0; j < len; ++j) {
    const float p = scores[j] / total;
    const float* vr = vb + j * vs;
    for (int64_t i = 0; i < dim; ++i) o[i] += p * vr[i];
  }
}

// Below this many multiply-adds in all, attention stays on the calling thread (a parallel region costs more).
constexpr int64_t ATTEND_PARALLEL_WORK = 1 << 16;

// One new position per sequence, each over its own cache: q [B, H, 1, D]; ks[b] and vs[b] [1, KV, L_b, D]
// (any strides with a contiguous last dimension, e.g. views of a larger buffer; lengths may differ).
// Returns [B, 1, H * D].
torch::Tensor attend_rows(const torch::Tensor& q_in, const std::vector<torch::Tensor>& ks, const std::vector<torch::Tensor>& vs,
                          double scale) {
  TORCH_CHECK(q_in.scalar_type() == torch::kFloat32 && q_in.dim() == 4 && q_in.size(2) == 1, "q must be float32 [B, H, 1, D]");
  const int64_t b = q_in.size(0), heads = q_in.size(1), dim = q_in.size(3);
  TORCH_CHECK(static_cast<int64_t>(ks.size()) == b && static_cast<int64_t>(vs.size()) == b, "one k and one v per row of q");
  int64_t kv_heads = 0, longest = 0, work = 0;
  for (int64_t bi = 0; bi < b; ++bi) {
    const auto& k = ks[bi];
    const auto& v = vs[bi];
    TORCH_CHECK(k.scalar_type() == torch::kFloat32 && v.scalar_type() == torch::kFloat32, "k and v must be float32");
    TORCH_CHECK(k.dim() == 4 && k.size(0) == 1 && v.sizes() == k.sizes() && k.size(3) == dim, "k and v must be [1, KV, L, D]");
    TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k and v need a contiguous last dimension");
    TORCH_CHECK(k.size(2) > 0, "an empty cache has nothing to attend to");
    TORCH_CHECK(bi == 0 || k.size(1) == kv_heads, "every row needs the same kv heads");
    kv_heads = k.size(1);
    longest = std::max(longest, k.size(2));
    work += heads * k.size(2) * dim;
  }
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, "heads must be a multiple of kv heads");
  const int64_t group = heads / kv_heads;
  auto q = q_in.contiguous();
  auto out = torch::empty({b, 1, heads * dim}, torch::kFloat32);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t grain = work < ATTEND_PARALLEL_WORK ? b * heads : 1;
  at::parallel_for(0, b * heads, grain, [&](int64_t h0, int64_t h1) {
    std::vector<float> scores(longest + 16);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t bi = bh / heads, hd = bh % heads, kh = hd / group;
      const auto& k = ks[bi];
      const auto& v = vs[bi];
      const float* kb = k.data_ptr<float>() + kh * k.stride(1);
      const float* vb = v.data_ptr<float>() + kh * v.stride(1);
      attend_one(qp + bh * dim, kb, k.stride(2), vb, v.stride(2), k.size(2), dim, sc, scores.data(), op + bh * dim);
    }
  });
  return out;
}

// Write each sequence's new position: k_new / v_new [B, KV, 1, D] go to the last position of ks[b] / vs[b]
// ([1, KV, L_b, D] views of the sequences' cache buffers, any strides with a contiguous last dimension).
void append_rows(const torch::Tensor& k_in, const torch::Tensor& v_in, const std::vector<torch::Tensor>& ks,
                 const std::vector<torch::Tensor>& vs) {
  TORCH_CHECK(k_in.scalar_type() == torch::kFloat32 && v_in.scalar_type() == torch::kFloat32, "k and v must be float32");
  TORCH_CHECK(k_in.dim() == 4 && k_in.size(2) == 1 && v_in.sizes() == k_in.sizes(), "new k and v must be [B, KV, 1, D]");
  const int64_t b = k_in.size(0), kv_heads = k_in.size(1), dim = k_in.size(3);
  TORCH_CHECK(static_cast<int64_t>(ks.size()) == b && static_cast<int64_t>(vs.size()) == b, "one cache view per row");
  auto kn = k_in.contiguous();
  auto vn = v_in.contiguous();
  for (int64_t bi = 0; bi < b; ++bi) {
    for (const auto* t : {&ks[bi], &vs[bi]}) {
      TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 4 && t->size(0) == 1 && t->size(1) == kv_heads &&
                      t->size(3) == dim && t->size(2) > 0 && t->stride(3) == 1,
                  "cache views must be float32 [1, KV, L, D] with a contiguous last dimension");
    }
    const auto& k = ks[bi];
    const auto& v = vs[bi];
    const int64_t last = k.size(2) - 1;
    for (int64_t h = 0; h < kv_heads; ++h) {
      std::memcpy(k.data_ptr<float>() + h * k.stride(1) + last * k.stride(2), kn.data_ptr<float>() + (bi * kv_heads + h) * dim, sizeof(float) * dim);
      std::memcpy(v.data_ptr<float>() + h * v.stride(1) + (v.size(2) - 1) * v.stride(2), vn.data_ptr<float>() + (bi * kv_heads + h) * dim, sizeof(float) * dim);
    }
  }
}

// The same for sequences of one length: q [B, H, 1, D], k and v [B, KV, L, D]. Returns [B, 1, H * D].
torch::Tensor attend_decode(const torch::Tensor& q_in, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  TORCH_CHECK(k.dim() == 4 && v.sizes() == k.sizes(), "k and v must be [B, KV, L, D]");
  TORCH_CHECK(q_in.dim() == 4 && q_in.size(0) == k.size(0), "q must be [B, H, 1, D]");
  std::vector<torch::Tensor> ks, vs;
  for (int64_t bi = 0; bi < k.size(0); ++bi) {
    ks.push_back(k.narrow(0, bi, 1));
    vs.push_back(v.narrow(0, bi, 1));
  }
  return attend_rows(q_in, ks, vs, scale);
}

// silu(gate) * up for a fused gate|up projection [..., 2 I] -> [..., I].
torch::Tensor silu_mul(const torch::Tensor& gu_in) {
  TORCH_CHECK(gu_in.scalar_type() == torch::kFloat32 && gu_in.size(-1) % 2 == 0, "silu_mul takes float32 [..., 2 I]");
  auto gu = gu_in.contiguous();
  const int64_t inter = gu.size(-1) / 2, rows = gu.numel() / (2 * inter);
  std::vector<int64_t> shape(gu.sizes().begin(), gu.sizes().end());
  shape.back() = inter;
  auto out = torch::empty(shape, torch::kFloat32);
  const float* g = gu.data_ptr<float>();
  float* o = out.data_ptr<float>();
#if INFLUENCE_AVX512
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* gr = g + r * 2 * inter;
    for (int64_t i = 0; i < inter; i += 16) {
      const __mmask16 m = inter - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (inter - i)) - 1);
      const __m512 a = _mm512_maskz_loadu_ps(m, gr + i);
      const __m512 silu = _mm512_div_ps(a, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), a))));
      _mm512_mask_storeu_ps(o + r * inter + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, gr + inter + i)));
    }
  }
  return out;
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < inter; ++i) {
      const float a = g[r * 2 * inter + i];
      o[r * inter + i] = a / (1.f + std::exp(-a)) * g[r * 2 * inter + inter + i];
    }
  return out;
}

bool has_avx512() { return INFLUENCE_AVX512 != 0; }
bool has_vnni() { return INFLUENCE_VNNI != 0; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "y = x @ W.T + bias with W packed");
  m.def("packed_dequantize", &packed_dequantize, "W as float32");
  m.def("has_avx512", &has_avx512, "whether the AVX-512 paths were compiled in");
  m.def("has_vnni", &has_vnni, "whether the integer-dot (AVX512-VNNI) decode path was compiled in");
  m.def("rms_norm", &rms_norm, "RMSNorm over the last dimension");
  m.def("qkv_rope", &qkv_rope, "split q|k|v and apply the rotary embedding");
  m.def("attend_decode", &attend_decode, "attention of one position over the cache");
  m.def("attend_rows", &attend_rows, "attention of one position per sequence, each over its own cache");
  m.def("append_rows", &append_rows, "write each sequence's new keys and values into its cache");
  m.def("silu_mul", &silu_mul, "silu(gate) * up");
}
