// SwiGLU's activation on the CPU for 16-bit models: out = silu(gate) * up, in torch's arithmetic.
//
//   gate_up: [T, 2 I] (row stride `stride` elements), gate = columns [0, I), up = [I, 2 I)
//   out[t, i] = round16( float(silu16(gate[t, i])) * float(up[t, i]) )
//
// torch runs this as F.silu(gate) (fp32 arithmetic, rounded to the 16-bit dtype) then mul_ (both
// factors as fp32, the product rounded): ~100 us for 16 rows of SmolLM2's 1,536 (three ops over a
// strided view), 30 times a step. A 16-bit gate has only 65,536 values, so silu16 is a table of
// torch's own F.silu over every bit pattern (built by the caller, kernels/cpu_silu_mul.py): the
// same bits by construction, whatever exp torch's build uses. The product of two 16-bit floats is
// exact in fp32 (8 or 11 significant bits each), so only its rounding remains, to nearest even as
// torch's conversions round. Elementwise: a row's bits never depend on the others in its step.
#include <cstdint>
#include <cstring>

#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu_bf16.h"

namespace {

using grove_bf16::bf16_to_float;
using grove_bf16::float_to_bf16;

inline float fp16_to_float(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

// fp32 -> fp16, rounded to nearest even (the conversion's IEEE rounding, as c10::Half's)
inline uint16_t float_to_fp16(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

#if defined(__AVX2__)
using grove_bf16::from_bf16;
using grove_bf16::to_bf16;
#endif

template <bool FP16>
void rows(const uint16_t* gate_up, int64_t t0, int64_t t1, int64_t I, int64_t stride, const uint16_t* table,
          uint16_t* out) {
  for (int64_t t = t0; t < t1; ++t) {
    const uint16_t* g = gate_up + t * stride;
    const uint16_t* u = g + I;
    uint16_t* o = out + t * I;
    int64_t i = 0;
#if defined(__AVX2__)
    // 8 at a time: the lookups scalar, the product and its rounding on 8 lanes
    for (; i + 8 <= I; i += 8) {
      const uint16_t* gi = g + i;
      const __m128i e = _mm_setr_epi16(table[gi[0]], table[gi[1]], table[gi[2]], table[gi[3]], table[gi[4]],
                                       table[gi[5]], table[gi[6]], table[gi[7]]);
      const __m128i up = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u + i));
      if constexpr (FP16) {
#if defined(__F16C__)
        const __m256 p = _mm256_mul_ps(_mm256_cvtph_ps(e), _mm256_cvtph_ps(up));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), _mm256_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT));
#else
        break;  // the scalar loop below
#endif
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), to_bf16(_mm256_mul_ps(from_bf16(e), from_bf16(up))));
      }
    }
#endif
    for (; i < I; ++i) {
      const uint16_t s = table[g[i]];
      if constexpr (FP16) o[i] = float_to_fp16(fp16_to_float(s) * fp16_to_float(u[i]));
      else o[i] = float_to_bf16(bf16_to_float(s) * bf16_to_float(u[i]));
    }
  }
}

}  // namespace

// gate_up: [T, 2 I] 16-bit (row stride `stride` >= 2 I); table: [65536] silu16 of every bit
// pattern; out: [T, I] contiguous. fp16: 1 for fp16, 0 for bf16. Rows split over the threads
// when there are many (a decode step's few rows take one: a parallel region costs more).
extern "C" int grove_silu_and_mul(const uint16_t* gate_up, int64_t T, int64_t I, int64_t stride,
                                  const uint16_t* table, int fp16, uint16_t* out, int num_threads) {
  if (stride < 2 * I) return 1;
  const int threads = T * I >= (1 << 14) && num_threads > 1 ? num_threads : 1;
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t t0 = T * tid / nt, t1 = T * (tid + 1) / nt;
    if (fp16) rows<true>(gate_up, t0, t1, I, stride, table, out);
    else rows<false>(gate_up, t0, t1, I, stride, table, out);
  }
  return 0;
}
