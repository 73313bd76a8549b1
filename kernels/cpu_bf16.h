// bf16 <-> fp32 conversions shared by Grove's CPU kernels that round as torch's .to(torch.bfloat16)
// does (cpu_linear.cpp's AVX2 path, cpu_silu_mul.cpp): nearest even, a NaN written as the quiet
// NaN 0x7FC0. (cpu_rope.cpp takes bf16_to_float but rounds back its own way: a NaN as torch's
// vectorized rounding writes it, 0xFFFF.)
// cpu_build.py keys each built library by this header too.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace grove_bf16 {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

#if defined(__AVX2__)
// 8 lanes at a time, lane for lane as float_to_bf16
inline __m128i to_bf16(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
  // 8 x 32 bits (each < 2^16) -> 8 x 16: packus works per 128-bit lane, so gather lanes 0 and 2
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0b1000);
  return _mm256_castsi256_si128(packed);
}

inline __m256 from_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
#endif

}  // namespace grove_bf16
