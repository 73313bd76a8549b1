// Greedy picks on the CPU: the index of each row's largest logit, the first one among equals (as
// torch's max(dim=-1).indices). torch's reduction with indices runs at ~1.6 ns an element on the
// development CPU: 0.36 ms for a 14-node lookahead tree over a 49,152-token vocabulary, 4.5 ms
// for 144 rows (16 requests drafting), a share of every verifying step. This one compares 16
// lanes at a time, rows split over the threads. On an AVX2-only AMD EPYC (Zen 1, session 42) the
// v16 loop ran at ~2 ns an element (GCC kept its state in memory): there it runs on 256-bit halves
// in registers, 16 rows of 49,152 in 0.10 ms instead of 1.47, the same picks.
//
// A row holding a NaN gets -1: the caller decides (torch would return the NaN's index).
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef float v16fu __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t v16i __attribute__((vector_size(64)));

int64_t argmax_row(const float* x, int64_t n) {
  int64_t i = 0;
  float best = -__builtin_inff();
  int64_t at = 0;
  bool nan = false;
  if (n >= 16) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    // Without AVX-512 GCC keeps the v16 loop state below in memory (a v16f is two 256-bit
    // registers): the same compares and selects on 256-bit halves held in registers
    __m256 b0 = _mm256_loadu_ps(x), b1 = _mm256_loadu_ps(x + 8);
    __m256i i0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(8));
    __m256i c0 = i0, c1 = i1;
    __m256 n0 = _mm256_cmp_ps(b0, b0, _CMP_UNORD_Q), n1 = _mm256_cmp_ps(b1, b1, _CMP_UNORD_Q);
    const __m256i step = _mm256_set1_epi32(16);
    for (i = 16; i + 16 <= n; i += 16) {
      const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
      c0 = _mm256_add_epi32(c0, step), c1 = _mm256_add_epi32(c1, step);
      const __m256 g0 = _mm256_cmp_ps(v0, b0, _CMP_GT_OQ), g1 = _mm256_cmp_ps(v1, b1, _CMP_GT_OQ);  // as v > bv
      b0 = _mm256_blendv_ps(b0, v0, g0), b1 = _mm256_blendv_ps(b1, v1, g1);
      i0 = _mm256_blendv_epi8(i0, c0, _mm256_castps_si256(g0)), i1 = _mm256_blendv_epi8(i1, c1, _mm256_castps_si256(g1));
      n0 = _mm256_or_ps(n0, _mm256_cmp_ps(v0, v0, _CMP_UNORD_Q)), n1 = _mm256_or_ps(n1, _mm256_cmp_ps(v1, v1, _CMP_UNORD_Q));
    }
    alignas(32) float bv[16];
    alignas(32) int32_t bi[16], seen_nan[16];
    _mm256_store_ps(bv, b0), _mm256_store_ps(bv + 8, b1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(bi), i0), _mm256_store_si256(reinterpret_cast<__m256i*>(bi + 8), i1);
    _mm256_store_ps(reinterpret_cast<float*>(seen_nan), n0), _mm256_store_ps(reinterpret_cast<float*>(seen_nan + 8), n1);
#else
    v16f bv = *reinterpret_cast<const v16fu*>(x);
    v16i bi, idx;
    for (int l = 0; l < 16; ++l) bi[l] = idx[l] = l;
    v16i seen_nan = bv != bv;
    for (i = 16; i + 16 <= n; i += 16) {
      const v16f v = *reinterpret_cast<const v16fu*>(x + i);
      idx += 16;
      const v16i gt = v > bv;  // strictly greater: a lane keeps its first maximum
      bv = gt ? v : bv;
      bi = gt ? idx : bi;
      seen_nan |= v != v;
    }
#endif
    for (int l = 0; l < 16; ++l) {
      nan |= seen_nan[l] != 0;
      if (bv[l] > best || (bv[l] == best && bi[l] < at)) best = bv[l], at = bi[l];
    }
  }
  for (; i < n; ++i) {
    nan |= x[i] != x[i];
    if (x[i] > best) best = x[i], at = i;  // later than every vector lane: only strictly greater wins
  }
  return nan ? -1 : at;
}

}  // namespace

// x: [rows, n] fp32, row stride `stride`; out: [rows] int64. Returns 0.
extern "C" int grove_argmax_rows(const float* x, int64_t rows, int64_t n, int64_t stride, int64_t* out,
                                 int num_threads) {
#pragma omp parallel for schedule(static) num_threads(rows > 1 ? num_threads : 1)
  for (int64_t r = 0; r < rows; ++r) out[r] = argmax_row(x + r * stride, n);
  return 0;
}
