// Paged attention on the CPU for decode, lookahead trees and prefill chunks: Grove's CPU kernel.
//
// Reads K/V straight from the paged pool through the block tables (no gather), attends each
// (sequence, kv head, chunk of query tokens) on one thread, in fp32 whatever the cache dtype.
//
// Row invariance is the contract: a query row gets the same bits whatever else is in its step
// (how many query tokens, which other sequences, how far the keys are padded). Lookahead
// verifies a token inside a tree where plain decoding computes it alone, and greedy output must
// not change. So every arithmetic sequence below depends only on the row's own query and the keys
// it sees, in ascending key order:
//   - a score is one FMA chain over head_dim (vectorised across 16 keys, never across head_dim);
//   - exp is a fixed polynomial (no library call that could differ between vector and scalar);
//   - the weighted value sum and the softmax denominator add keys in ascending order, one at a
//     time; a key the row may not see adds an exact zero (its weight is 0), which changes nothing,
//     so a tree node sees the same sums as the same token decoded with its path compacted;
//   - every loop over keys runs whole 16-key tiles (the tail of a tile is masked, not a separate
//     scalar loop), so no key goes through different code depending on the key count;
//   - a sliding window hides keys the same way (zero weights), and the tiles before the first key
//     any row of a work item can see are not read at all: for every row they are exact zeros.
// Built with -O3 -march=native and without -ffast-math: the compiler may not reassociate.
// On CPUs with AMX a bf16 model takes the AMX path below instead (scores and most of the value sums
// on tiles, P in bf16; a row's last AMX_TAIL keys one at a time, which keeps tree rows exact).
//
// Decode reads every key and value of the batch once per layer, so it is bound by memory: values
// are read from the pool in place and converted on load (no fp32 copy of them), keys and values
// are prefetched into L2 four tiles ahead (blocks are scattered, so the hardware prefetchers
// restart at each one; AHEAD says why L2), a decode step's group of rows reads the values in one
// pass, and each thread keeps its scratch across calls. bf16, 2 threads, one layer, 30 layers'
// pools cycled (before the L2 prefetch): 16 sequences behind 1,500 tokens 2.39 -> 1.07 ms, 16
// trees of 9 behind 500 1.45 -> 1.01 ms (same bits).
//
// With AVX512-BF16 and a bf16 q and cache (bf16 serving), scores take VDPBF16PS on raw dim pairs
// (score_tiles_bf16: no conversion, half the multiply-adds, four tiles' chains side by side) and
// bf16 values are split into even / odd dims by two bit operations instead of shuffled into order
// (split_bf16; the value sums keep their bits). Measured on an AMD EPYC, 2 threads, same harness
// (session 12): one sequence behind 900 decoding 45 -> 26-30 us a layer, its 14-node tree 146 ->
// 93-102 us; 16 sequences behind 1,500 1.19 -> 0.67-0.68 ms; 16 trees of 9 behind 500 1.05 ->
// 0.61-0.62 ms. Decode then read ~27 GB/s there: prefetching further ahead, into L2, or on huge
// pages changed nothing on that machine. On another Zen 4 (session 22) the same code read ~10 GB/s
// and prefetching into L2 took it to ~18 (AHEAD); huge pages changed nothing there either.
//
// Without AVX-512 (AVX2 + FMA: AMD Zen 1-3, older Intel) a v16f is two 256-bit registers, and two
// things of the loops above lowered badly (session 39, an AVX2-only AMD EPYC of family 23 model 1):
// GCC turned the 16 x 16 transpose's two-register shuffles into element moves through the stack,
// and a pass of value_rows over all 64 dims of a decode group's 3 rows held 24 accumulator
// registers of 16. There the transpose runs as four 8 x 8 ones on 256-bit halves, and the values
// take one 16-dim column per pass over the keys (VALUE_COLUMNS). Same bits (the same chains);
// scripts/ab_cpu_attention.py, 2 threads, ms a layer, before -> after: fp32 one decode behind
// 900 0.77 -> 0.47, 16 decodes behind 1,500 15.9 -> 8.8, a tree of 14 behind 900 4.5 -> 3.4, a
// prefill of 1,024 176 -> 125; bf16 0.76 -> 0.42, 15.1 -> 8.4, 4.8 -> 3.2, 184 -> 123.
// Session 42, same CPU: GCC still kept every v16f accumulator array of the score and value loops
// in memory there, each FMA wrapped in ~15 moves through general registers (perf annotate: the
// two loops ~45% of a tree's time). Now those loops, the key tile's load and transpose, the row
// max and the exp of wholly visible tiles take 256-bit halves in registers (GROVE_AVX2_LOOPS): the
// same operations on the same lanes, the same bits. bf16, 2 threads, ms a layer, before -> after:
// 16 decodes behind 600 3.31 -> 1.27, behind 1,500 8.29 -> 3.31, one decode behind 900 0.41 ->
// 0.16, 16 trees of 14 behind 600 35.3 -> 9.96, one tree of 14 behind 900 3.13 -> 0.84, a prefill
// of 1,024 124 -> 31.4; fp32 alike (0.35-0.53x), fp16 0.52-0.70x.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX512BF16__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include "cpu_amx.h"
#endif

namespace {

constexpr int TILE = 16;         // keys per tile (one AVX-512 register of fp32)
constexpr int CHUNK_TOKENS = 8;  // query tokens per work item (x group rows)
typedef float v16f __attribute__((vector_size(TILE * sizeof(float))));  // 16 keys side by side
typedef float v16fu __attribute__((vector_size(TILE * sizeof(float)), aligned(4), may_alias));  // unaligned view
typedef uint16_t v16u16 __attribute__((vector_size(TILE * sizeof(uint16_t))));
typedef uint32_t v16u32 __attribute__((vector_size(TILE * sizeof(uint32_t))));
typedef _Float16 v16h __attribute__((vector_size(TILE * sizeof(_Float16))));

// 16 consecutive elements as fp32
inline v16f load16(const float* p) { return *reinterpret_cast<const v16fu*>(p); }
inline void store16(float* p, v16f x) { *reinterpret_cast<v16fu*>(p) = x; }
inline v16f load16(const uint16_t* p) {
  v16u16 h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<v16f>(__builtin_convertvector(h, v16u32) << 16);
}
inline v16f load16(const _Float16* p) { v16h h; std::memcpy(&h, p, sizeof h); return __builtin_convertvector(h, v16f); }

#if defined(__AVX2__) && !defined(__AVX512F__)
// Without AVX-512 GCC keeps a v16f accumulator array in memory and moves it through general
// registers around each FMA (vmovq / vpinsrq: ~15 instructions a multiply-add; the score and
// value loops were ~45% of a tree's time on an AMD EPYC of family 23, model 1). So the hot loops
// take the 16 lanes as two 256-bit halves in registers (GROVE_AVX2_LOOPS): the same FMAs on the same
// lanes in the same order, the same bits.
#define GROVE_AVX2_LOOPS 1
// 16 consecutive elements as fp32, lanes 0-7 and 8-15 (exact conversions, as load16)
inline void load_halves(const float* p, __m256& lo, __m256& hi) { lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8); }
inline void load_halves(const uint16_t* p, __m256& lo, __m256& hi) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
  hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
}
inline void load_halves(const _Float16* p, __m256& lo, __m256& hi) {
#if defined(__F16C__)
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h)), hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
#else
  const v16f x = load16(p);
  lo = _mm256_loadu_ps(reinterpret_cast<const float*>(&x)), hi = _mm256_loadu_ps(reinterpret_cast<const float*>(&x) + 8);
#endif
}
#endif

// One butterfly stage of a 16x16 transpose: rows i and i + B (i & B == 0) swap their off-diagonal
// B-wide blocks. After the stages B = 8, 4, 2, 1, row c holds what column c held.
template <int B, size_t... I>
inline v16f upper(v16f x, v16f y, std::index_sequence<I...>) {
  return __builtin_shufflevector(x, y, ((I & B) ? 16 + I - B : I)...);
}
template <int B, size_t... I>
inline v16f lower(v16f x, v16f y, std::index_sequence<I...>) {
  return __builtin_shufflevector(x, y, ((I & B) ? 16 + I : I + B)...);
}
template <int B>
inline void stage(v16f* m) {
  constexpr auto idx = std::make_index_sequence<16>{};
  for (int i = 0; i < 16; ++i) {
    if (i & B) continue;
    const v16f x = m[i], y = m[i + B];
    m[i] = upper<B>(x, y, idx);
    m[i + B] = lower<B>(x, y, idx);
  }
}
#if defined(__AVX2__) && !defined(__AVX512F__)
// Without AVX-512 a v16f is two 256-bit registers, and GCC lowers the butterfly's two-register
// shuffles to element moves through the stack (~1,400 of ~14,000 instructions of a bf16 work item
// were such moves). So a key tile's 16 x 16 transpose runs as four 8 x 8 ones on 256-bit halves
// loaded straight from the keys (the unpack / shuffle / permute sequence): the same values moved,
// no arithmetic.
inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

#else
inline void transpose16(v16f* m) { stage<8>(m); stage<4>(m); stage<2>(m); stage<1>(m); }
#endif

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {  // bf16: the upper half of an fp32
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  return __builtin_bit_cast(float, bits);
}
inline float load(const _Float16* p, int64_t i) { return static_cast<float>(p[i]); }

// fp32 -> the output's dtype, rounded to nearest even as torch's .to() does (NaN -> quiet NaN)
inline void store(float* p, int64_t i, float x) { p[i] = x; }
inline void store(uint16_t* p, int64_t i, float x) {
  const uint32_t u = __builtin_bit_cast(uint32_t, x);
  p[i] = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t{0x7fc0} : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline void store(_Float16* p, int64_t i, float x) { p[i] = static_cast<_Float16>(x); }

// exp(x) for x <= 0 (scores minus their max): range reduction by ln 2, degree-6 polynomial,
// scale by 2^n through the exponent bits. ~2 ulp; pure arithmetic, so it vectorises identically.
// (exp_neg8 below runs the same steps on 8 lanes: one set of constants for both, as a tree node's
// key and the same key decoded plainly may take either.) The polynomial is written out, not a
// loop over EXP_POLY: with the loop GCC no longer vectorised the callers' 16-key loops on AVX-512,
// and attention took 1.2-2.3x as long a layer (trees and prefills ~2x; session 46, AMD Zen 4,
// scripts/ab_cpu_attention.py). The loop came from a review on an AVX2 machine, where the wholly
// visible tiles take exp_neg8.
constexpr float EXP_FLOOR = -87.0f, EXP_LOG2E = 1.44269504088896341f, EXP_SHIFT = 12582912.0f;
constexpr float EXP_LN2_HI = -0.693359375f, EXP_LN2_LO = 2.12194440e-4f;
constexpr float EXP_POLY[7] = {1.38888889e-3f, 8.33333333e-3f, 4.16666667e-2f, 1.66666667e-1f, 0.5f, 1.0f, 1.0f};
inline float exp_neg(float x) {
  x = x < EXP_FLOOR ? EXP_FLOOR : x;
  const float n = (x * EXP_LOG2E + EXP_SHIFT) - EXP_SHIFT;  // round to nearest
  float r = __builtin_fmaf(n, EXP_LN2_HI, x);
  r = __builtin_fmaf(n, EXP_LN2_LO, r);
  float p = EXP_POLY[0];
  p = __builtin_fmaf(p, r, EXP_POLY[1]);
  p = __builtin_fmaf(p, r, EXP_POLY[2]);
  p = __builtin_fmaf(p, r, EXP_POLY[3]);
  p = __builtin_fmaf(p, r, EXP_POLY[4]);
  p = __builtin_fmaf(p, r, EXP_POLY[5]);
  p = __builtin_fmaf(p, r, EXP_POLY[6]);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

#if defined(GROVE_AVX2_LOOPS)
// exp_neg on 8 lanes, operation for operation (the scalar's multiply-adds are contracted, as here)
inline __m256 exp_neg8(__m256 x) {
  const __m256 floor = _mm256_set1_ps(EXP_FLOOR), shift = _mm256_set1_ps(EXP_SHIFT);
  x = _mm256_blendv_ps(x, floor, _mm256_cmp_ps(x, floor, _CMP_LT_OQ));
  const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), shift), shift);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
  __m256 p = _mm256_set1_ps(EXP_POLY[0]);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[1]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[2]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[3]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[4]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[5]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_POLY[6]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

struct Args {
  const void* q;   // [T, H, D], contiguous: fp32, or the cache's dtype (then so is out)
  const void* k;   // [num_blocks, ...]: block b's [block_size, kvh, D] start at b * block_stride
  const void* v;
  int64_t block_stride, block_size, kvh, group, head_dim;
  const int64_t* block_tables;  // [B, max_blocks]
  int64_t max_blocks;
  const int64_t* query_start;  // [B + 1]
  const int64_t* num_cached;   // [B]
  const uint8_t* tree_mask;    // [T, mask_stride] or null (causal chains)
  int64_t mask_stride;
  const int64_t* positions;    // [T]: each query token's position (a tree node's by depth); read with a window
  int64_t window;              // sliding window W: a query at position p sees keys at positions > p - W; 0: none
  float scale;
  void* out;  // [T, H, D], q's dtype
};

struct Scratch {
  std::vector<float> q, scores, acc, den, vrow;
  std::vector<v16f> kt;
  std::vector<int64_t> offset;
  std::vector<uint32_t> qp;  // bf16 q rows as dim pairs (the VDPBF16PS path)
};

// Scores of RB rows against one transposed tile: per row one FMA chain over head_dim, 16 keys
// side by side. The same arithmetic for a row whatever RB is (rows never mix).
template <int RB>
inline void score_rows(const float* qs, const v16f* kt, int64_t D, float scale, float* s, int64_t width) {
#if defined(GROVE_AVX2_LOOPS)
  __m256 lo[RB], hi[RB];  // lanes 0-7 and 8-15 of each row's chain
  for (int r = 0; r < RB; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  const float* k = reinterpret_cast<const float*>(kt);
  for (int64_t d = 0; d < D; ++d) {
    const __m256 k0 = _mm256_load_ps(k + TILE * d), k1 = _mm256_load_ps(k + TILE * d + 8);
    for (int r = 0; r < RB; ++r) {
      const __m256 q = _mm256_broadcast_ss(qs + r * D + d);
      lo[r] = _mm256_fmadd_ps(q, k0, lo[r]);
      hi[r] = _mm256_fmadd_ps(q, k1, hi[r]);
    }
  }
  const __m256 sc = _mm256_set1_ps(scale);
  for (int r = 0; r < RB; ++r) {
    _mm256_storeu_ps(s + r * width, _mm256_mul_ps(lo[r], sc));
    _mm256_storeu_ps(s + r * width + 8, _mm256_mul_ps(hi[r], sc));
  }
#else
  v16f acc[RB] = {};
  for (int64_t d = 0; d < D; ++d) {
    const v16f k = kt[d];
    for (int r = 0; r < RB; ++r) acc[r] = qs[r * D + d] * k + acc[r];  // contracted: one FMA
  }
  for (int r = 0; r < RB; ++r) store16(s + r * width, acc[r] * scale);
#endif
}

#if defined(__AVX512BF16__)
// bf16 q and keys (the serving dtype): scores by VDPBF16PS, two dims a multiply-add. kt[p] holds
// dims 2p, 2p + 1 of 16 keys side by side (one 32-bit pair a lane), qp a row's dims as the same
// pairs. Per row one chain over the D / 2 pairs, in order, whatever RB is (rows never mix); the
// products are exact in fp32, so a score differs from the fp32 FMA chain's only in its roundings.
//
// A chain is ~5 cycles a step: a decode step's three rows against one tile left the unit idle
// (36 cycles a key). So NT tiles go side by side (kt: NT x [D / 2] pairs): RB x NT independent
// chains; a score's own chain is the same whatever RB and NT are.
template <int RB, int NT>
inline void score_tiles_bf16(const uint32_t* qp, const v16f* kt, int64_t P, float scale, float* s, int64_t width) {
  __m512 acc[RB][NT];
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NT; ++n) acc[r][n] = _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    __m512bh k[NT];
    for (int n = 0; n < NT; ++n) k[n] = (__m512bh)kt[n * P + p];
    for (int r = 0; r < RB; ++r) {
      const __m512bh q = (__m512bh)_mm512_set1_epi32(static_cast<int>(qp[r * P + p]));
      for (int n = 0; n < NT; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], q, k[n]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int n = 0; n < NT; ++n) store16(s + r * width + n * TILE, v16f(acc[r][n]) * scale);
}

// All R rows against NT tiles: four rows at a time, then the rest.
template <int NT>
inline void score_rows_bf16(const uint32_t* qp, const v16f* kt, int64_t P, int64_t R, float scale, float* s,
                            int64_t width) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) score_tiles_bf16<4, NT>(qp + r * P, kt, P, scale, s + r * width, width);
  switch (R - r) {
    case 3: score_tiles_bf16<3, NT>(qp + r * P, kt, P, scale, s + r * width, width); break;
    case 2: score_tiles_bf16<2, NT>(qp + r * P, kt, P, scale, s + r * width, width); break;
    case 1: score_tiles_bf16<1, NT>(qp + r * P, kt, P, scale, s + r * width, width); break;
    default: break;
  }
}
constexpr bool BF16_DOT = true;
#else
constexpr bool BF16_DOT = false;
#endif
constexpr int SIDE_TILES = 4;  // tiles scored side by side (the bf16 path)

template <typename T>
inline void prefetch_row(const T* p, int64_t D) {  // into L1 (the AMX path's)
  for (int64_t d = 0; d < D; d += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(p + d);
}

// Keys ahead of the one being read whose K / V rows are prefetched (prefetch_l2): a tile's keys
// sit in one block and blocks are scattered in the pool, so the hardware prefetchers start over at
// every block. Into L2, not L1: a prefetch into L1 holds one of the core's few L1 miss buffers
// until its line comes (~5 GB/s a thread is ~10 lines in flight at ~100 ns each: an estimate from
// the rate, no counters on this VM); into L2 it does not.
// AMD EPYC (Zen 4), 2 threads, bf16, SmolLM2's heads, 30 layers' pools
// (scripts/ab_cpu_attention.py), ms a layer, 2 tiles ahead into L1 -> 4 tiles ahead into L2:
// 16 decodes behind 1,500 1.72-1.90 -> 1.03-1.21, behind 600 0.63-0.76 -> 0.40-0.45, one decode
// behind 900 0.049-0.052 -> 0.034-0.036, 16 trees of 8 behind 600 1.40-1.58 -> 1.03-1.16 (same
// bits). 8 tiles ahead measured alike; 8 tiles ahead into L1 as slow as 2. No arithmetic depends on it.
constexpr int64_t AHEAD = 4 * TILE;

template <typename T>
inline void prefetch_l2(const T* p, int64_t D) {
  for (int64_t d = 0; d < D; d += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(p + d, 0, 2);
}

// 32 bf16 values as two fp32 vectors without shuffles: the even dims (0, 2, .., 30) and the odd ones.
// A 32-bit lane holds dims 2i (low half) and 2i + 1 (high half); each is the upper half of its fp32.
inline void split_bf16(const uint16_t* p, v16f& even, v16f& odd) {
  v16u32 x;
  std::memcpy(&x, p, sizeof x);
  even = reinterpret_cast<v16f>(x << 16);
  odd = reinterpret_cast<v16f>(x & 0xffff0000u);
}

// Weighted values of RB rows over keys j0..L-1 in ascending order, D = 16 * DV, read straight from
// the cache (converted on load: exact): per element one FMA chain over the keys, and the
// denominator one sum over the keys (a zero weight adds nothing). bf16 values are held as even /
// odd dims (split_bf16) and put back in order at the store: the same chains, the same bits.
template <typename T, int RB, int DV>
inline void value_rows(const float* p, int64_t width, const T* vc, const int64_t* offset, int64_t j0, int64_t L,
                       float* out, int64_t out_stride, float* den) {
#if defined(GROVE_AVX2_LOOPS)
  if constexpr (DV == 1) {  // one 16-dim column (VALUE_COLUMNS): lanes 0-7 and 8-15 in registers
    __m256 lo[RB], hi[RB];
    float sum[RB] = {};
    for (int r = 0; r < RB; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
    for (int64_t j = j0; j < L; ++j) {
      if (j + AHEAD < L) prefetch_l2(vc + offset[j + AHEAD], TILE);
      __m256 v0, v1;
      load_halves(vc + offset[j], v0, v1);
      for (int r = 0; r < RB; ++r) {
        const __m256 w = _mm256_broadcast_ss(p + r * width + j);
        lo[r] = _mm256_fmadd_ps(w, v0, lo[r]);
        hi[r] = _mm256_fmadd_ps(w, v1, hi[r]);
        if (den) sum[r] += p[r * width + j];
      }
    }
    for (int r = 0; r < RB; ++r) {
      _mm256_storeu_ps(out + r * out_stride, lo[r]);
      _mm256_storeu_ps(out + r * out_stride + 8, hi[r]);
      if (den) den[r] = sum[r];
    }
    return;
  }
#endif
  constexpr bool split = std::is_same_v<T, uint16_t> && DV % 2 == 0;
  v16f acc[RB][DV] = {};
  float sum[RB] = {};
  for (int64_t j = j0; j < L; ++j) {
    if (j + AHEAD < L) prefetch_l2(vc + offset[j + AHEAD], DV * TILE);
    v16f v[DV];
    const T* vp = vc + offset[j];
    if constexpr (split) {
      for (int c = 0; c < DV; c += 2) split_bf16(vp + c * TILE, v[c], v[c + 1]);
    } else {
      for (int c = 0; c < DV; ++c) v[c] = load16(vp + c * TILE);
    }
    for (int r = 0; r < RB; ++r) {
      const float w = p[r * width + j];
      for (int c = 0; c < DV; ++c) acc[r][c] = w * v[c] + acc[r][c];
      if (den) sum[r] += w;  // (the other column passes leave the denominators to the first)
    }
  }
  for (int r = 0; r < RB; ++r) {
    float* o = out + r * out_stride;
    if constexpr (split) {
      for (int c = 0; c < DV; c += 2) {  // interleave even and odd dims back into order
        const v16f e = acc[r][c], d = acc[r][c + 1];
        store16(o + c * TILE, __builtin_shufflevector(e, d, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
        store16(o + (c + 1) * TILE,
                __builtin_shufflevector(e, d, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
      }
    } else {
      for (int c = 0; c < DV; ++c) store16(o + c * TILE, acc[r][c]);
    }
    if (den) den[r] = sum[r];
  }
}

// Head dims per pass over the keys (x 16): all of them with AVX-512 (a v16f is one register). With
// AVX2 a v16f is two, and a pass over all 64 dims of 3 rows held 24 accumulator registers of 16
// (spilled every key); there one 16-dim column per pass, the passes over the same keys' other
// cache lines. An element's chain is the same either way.
#if defined(__AVX512F__)
constexpr int VALUE_COLUMNS = 8;
#else
constexpr int VALUE_COLUMNS = 1;
#endif

template <typename T, int RB, int DV>
inline void value_columns(const float* p, int64_t width, const T* vc, const int64_t* offset, int64_t j0, int64_t L,
                          float* out, float* den) {
  constexpr int VC = DV < VALUE_COLUMNS ? DV : VALUE_COLUMNS;
  for (int c0 = 0; c0 < DV; c0 += VC)
    value_rows<T, RB, VC>(p, width, vc + c0 * TILE, offset, j0, L, out + c0 * TILE, DV * TILE,
                          c0 == 0 ? den : nullptr);  // the denominators from the first pass
}

// All R rows, four per pass over the values and the rest in one more (a decode step's group of
// three rows reads the values once). A row's arithmetic is the same in any pass.
template <typename T, int DV>
inline void values(const float* p, int64_t width, const T* vc, const int64_t* offset, int64_t j0, int64_t L,
                   int64_t R, float* out, float* den) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) value_columns<T, 4, DV>(p + r * width, width, vc, offset, j0, L, out + r * DV * TILE, den + r);
  const float* pr = p + r * width;
  float* o = out + r * DV * TILE;
  switch (R - r) {
    case 3: value_columns<T, 3, DV>(pr, width, vc, offset, j0, L, o, den + r); break;
    case 2: value_columns<T, 2, DV>(pr, width, vc, offset, j0, L, o, den + r); break;
    case 1: value_columns<T, 1, DV>(pr, width, vc, offset, j0, L, o, den + r); break;
    default: break;
  }
}

// Softmax weights of R rows (row r: new token tok0 + r / group) over keys t_first * 16 .. L - 1:
// scores s[r * width + j] become exp(score - the row's max), or 0 where the row may not see the key.
// Cached keys from the row's window start (0 without a window) are visible; the step's own tokens
// by the tree mask (or causally) and the window; keys past L never. Tiles wholly visible take the
// vector path (the same values: a max is a max, and a visible key's weight is its exp either way).
template <typename PosFn>
void softmax_rows(const Args& a, float* s, int64_t width, int64_t R, int64_t tok0, int64_t q_first, int64_t cached,
                  int64_t L, int64_t t_first, PosFn pos_of_new) {
  const int64_t G = a.group, j0 = t_first * TILE, tiles = (L + TILE - 1) / TILE;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = tok0 + r / G;  // the row's index among the new tokens
    const uint8_t* mrow = a.tree_mask ? a.tree_mask + (q_first + i) * a.mask_stride : nullptr;
    const int64_t lo = a.window > 0 ? pos_of_new(i) - a.window + 1 : 0;  // first position the row sees
    float* sr = s + r * width;
    auto visible = [&](int64_t j) -> bool {
      if (j < cached) return j >= lo;
      if (j >= L) return false;
      return (mrow ? mrow[j - cached] != 0 : j - cached <= i) && pos_of_new(j - cached) >= lo;
    };
    // tiles [open_lo, open_hi) are wholly visible: cached keys from the window start, and in a
    // causal chain without a window (a prefill chunk) the step's own tokens up to the row's too,
    // where visible(j) is j <= cached + i (the vector path then takes a prefill row's keys)
    const int64_t open_hi = (!mrow && a.window <= 0 ? cached + i + 1 : cached) / TILE;
    int64_t open_lo = lo <= 0 ? 0 : (lo + TILE - 1) / TILE;
    if (open_lo > open_hi) open_lo = open_hi;  // none: every key goes through visible()
#if defined(GROVE_AVX2_LOOPS)
    __m256 mlo = _mm256_set1_ps(-__builtin_inff()), mhi = mlo;
    for (int64_t t = open_lo; t < open_hi; ++t) {  // max_ps(x, mv) is x > mv ? x : mv, lane by lane
      mlo = _mm256_max_ps(_mm256_loadu_ps(sr + t * TILE), mlo);
      mhi = _mm256_max_ps(_mm256_loadu_ps(sr + t * TILE + 8), mhi);
    }
    alignas(32) float mv[TILE];
    _mm256_store_ps(mv, mlo);
    _mm256_store_ps(mv + 8, mhi);
#else
    v16f mv;
    for (int jj = 0; jj < TILE; ++jj) mv[jj] = -__builtin_inff();
    for (int64_t t = open_lo; t < open_hi; ++t) {
      const v16f x = load16(sr + t * TILE);
      mv = x > mv ? x : mv;
    }
#endif
    float m = -__builtin_inff();
    for (int jj = 0; jj < TILE; ++jj) m = mv[jj] > m ? mv[jj] : m;
    for (int64_t j = j0; j < open_lo * TILE; ++j)
      if (visible(j) && sr[j] > m) m = sr[j];
    for (int64_t j = open_hi * TILE; j < L; ++j)
      if (visible(j) && sr[j] > m) m = sr[j];
    for (int64_t t = t_first; t < tiles; ++t) {
#if defined(GROVE_AVX2_LOOPS)
      if (t >= open_lo && t < open_hi) {  // exp_neg on 8 lanes at a time: the same operations
        const __m256 mm = _mm256_set1_ps(m);
        _mm256_storeu_ps(sr + t * TILE, exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(sr + t * TILE), mm)));
        _mm256_storeu_ps(sr + t * TILE + 8, exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(sr + t * TILE + 8), mm)));
        continue;
      }
#endif
      float e[TILE];
      for (int jj = 0; jj < TILE; ++jj) e[jj] = exp_neg(sr[t * TILE + jj] - m);
      if (t >= open_lo && t < open_hi) {
        for (int jj = 0; jj < TILE; ++jj) sr[t * TILE + jj] = e[jj];
      } else {
        for (int jj = 0; jj < TILE; ++jj) sr[t * TILE + jj] = visible(t * TILE + jj) ? e[jj] : 0.0f;
      }
    }
  }

}

template <typename T, typename TQ>  // T: the cache's element type, TQ: q's and out's
void attend_item(const Args& a, int64_t seq, int64_t head, int64_t chunk, Scratch& w) {
  const int64_t D = a.head_dim, G = a.group, H = a.kvh * G;
  const int64_t q_first = a.query_start[seq], n_new = a.query_start[seq + 1] - q_first;
  const int64_t cached = a.num_cached[seq];
  const int64_t tok0 = chunk * CHUNK_TOKENS;
  const int64_t ntok = n_new - tok0 < CHUNK_TOKENS ? n_new - tok0 : CHUNK_TOKENS;
  // keys this chunk may see: a token sees none of the step's tokens after it (a tree node's
  // ancestors come before it), so later keys would only add exact zeros; they are not read
  const int64_t L = cached + tok0 + ntok;
  const int64_t R = ntok * G, tiles = (L + TILE - 1) / TILE, width = tiles * TILE;
  // a sliding window hides the keys at positions <= p - W from a row at position p; a cached key's
  // position is its index, a new token's is a.positions (by depth in a tree)
  auto pos_of_new = [&](int64_t i) { return a.positions ? a.positions[q_first + i] : cached + i; };
  // keys before the first tile any row of the chunk sees are not read: for every row they would
  // only add exact zeros (so a row's bits do not depend on its chunk mates' windows either)
  int64_t first_key = 0;
  if (a.window > 0) {
    first_key = cached;  // the step's own tokens are always read (the mask decides)
    for (int64_t i = tok0; i < tok0 + ntok; ++i) {
      const int64_t lo = pos_of_new(i) - a.window + 1;
      first_key = lo < first_key ? (lo > 0 ? lo : 0) : first_key;
    }
  }
  const int64_t t_first = first_key / TILE, j0 = t_first * TILE;
  const T* kc = static_cast<const T*>(a.k);
  const T* vc = static_cast<const T*>(a.v);
  const int64_t* table = a.block_tables + seq * a.max_blocks;
  w.offset.resize(L);
  int64_t* __restrict__ offset = w.offset.data();  // element offset of key/value j of this kv head
  for (int64_t j = j0, blk = j0 / a.block_size, slot = j0 % a.block_size; j < L; ++j) {  // no division per key
    offset[j] = table[blk] * a.block_stride + (slot * a.kvh + head) * D;
    if (++slot == a.block_size) slot = 0, ++blk;
  }
  auto key_at = [&](const T* cache, int64_t j) { return cache + offset[j]; };

  w.q.resize(R * D);
  w.scores.resize(R * width);
  w.kt.resize(D * (BF16_DOT ? SIDE_TILES : 1));
  w.acc.resize(R * D);
  w.den.resize(R);
  if (D != 64 && D != 128) w.vrow.resize(L * D);
  float* __restrict__ qs = w.q.data();
  float* __restrict__ s = w.scores.data();
  v16f* __restrict__ kt = w.kt.data();
  for (int64_t r = 0; r < R; ++r) {  // row r: query token tok0 + r / G, head head * G + r % G
    const TQ* src = static_cast<const TQ*>(a.q) + ((q_first + tok0 + r / G) * H + head * G + r % G) * D;
    for (int64_t d = 0; d < D; ++d) qs[r * D + d] = load(src, d);
  }

  // scores, one 16-key tile at a time, the tile transposed to [D][16 keys] (bf16 pairs: [D / 2][16 keys])
  constexpr bool bf16_dot = BF16_DOT && std::is_same_v<T, uint16_t> && std::is_same_v<TQ, uint16_t>;
  const bool pairs = bf16_dot && D % (2 * TILE) == 0;
  const int64_t P = D / 2;
  if (pairs) {
    w.qp.resize(R * P);
    for (int64_t r = 0; r < R; ++r)
      std::memcpy(w.qp.data() + r * P, static_cast<const TQ*>(a.q) + ((q_first + tok0 + r / G) * H + head * G + r % G) * D,
                  D * sizeof(TQ));
  }
  for (int64_t j = j0; j < j0 + AHEAD && j < L; ++j) prefetch_l2(key_at(kc, j), D);
  for (int64_t t = t_first; t < tiles; ++t) {
    for (int64_t j = t * TILE + AHEAD; j < t * TILE + AHEAD + TILE && j < L; ++j) prefetch_l2(key_at(kc, j), D);
    float* st = s + t * TILE;
#if defined(__AVX512BF16__)
    if (pairs) {  // 16 keys x 16 pairs blocks, the raw bits transposed in registers
      const int64_t nt = tiles - t < SIDE_TILES ? tiles - t : SIDE_TILES;
      for (int64_t n = 0; n < nt; ++n) {
        if (n > 0)
          for (int64_t j = (t + n) * TILE + AHEAD; j < (t + n) * TILE + AHEAD + TILE && j < L; ++j)
            prefetch_l2(key_at(kc, j), D);
        for (int64_t p0 = 0; p0 < P; p0 += TILE) {
          v16f m[TILE];
          for (int jj = 0; jj < TILE; ++jj) {
            const int64_t j = (t + n) * TILE + jj;
            if (j < L) std::memcpy(&m[jj], key_at(kc, j) + 2 * p0, sizeof m[jj]);
            else m[jj] = v16f{};
          }
          transpose16(m);
          for (int c = 0; c < TILE; ++c) kt[n * P + p0 + c] = m[c];
        }
      }
      const uint32_t* qp = w.qp.data();
      switch (nt) {
        case 4: score_rows_bf16<4>(qp, kt, P, R, a.scale, st, width); break;
        case 3: score_rows_bf16<3>(qp, kt, P, R, a.scale, st, width); break;
        case 2: score_rows_bf16<2>(qp, kt, P, R, a.scale, st, width); break;
        default: score_rows_bf16<1>(qp, kt, P, R, a.scale, st, width); break;
      }
      t += nt - 1;
      continue;
    }
#endif
    if (D % TILE == 0) {  // 16 x 16 blocks, transposed in registers
#if defined(GROVE_AVX2_LOOPS)
      // as four 8 x 8 blocks straight from the keys' rows (no v16f through memory): keys 0-7 give
      // lanes 0-7 of kt[d0 + c], keys 8-15 lanes 8-15; a key past L is zeros
      float* ktf = reinterpret_cast<float*>(kt);
      for (int64_t d0 = 0; d0 < D; d0 += TILE)
        for (int half = 0; half < 2; ++half) {
          __m256 lo[8], hi[8];  // dims d0..d0+7 and d0+8..d0+15 of keys 8 half + i
          for (int i = 0; i < 8; ++i) {
            const int64_t j = t * TILE + 8 * half + i;
            if (j < L) load_halves(key_at(kc, j) + d0, lo[i], hi[i]);
            else lo[i] = hi[i] = _mm256_setzero_ps();
          }
          transpose8(lo);
          transpose8(hi);
          for (int c = 0; c < 8; ++c) {
            _mm256_store_ps(ktf + (d0 + c) * TILE + 8 * half, lo[c]);
            _mm256_store_ps(ktf + (d0 + 8 + c) * TILE + 8 * half, hi[c]);
          }
        }
#else
      for (int64_t d0 = 0; d0 < D; d0 += TILE) {
        v16f m[TILE];
        for (int jj = 0; jj < TILE; ++jj) {
          const int64_t j = t * TILE + jj;
          m[jj] = j < L ? load16(key_at(kc, j) + d0) : v16f{};
        }
        transpose16(m);
        for (int c = 0; c < TILE; ++c) kt[d0 + c] = m[c];
      }
#endif
    } else {
      for (int jj = 0; jj < TILE; ++jj) {
        const int64_t j = t * TILE + jj;
        const T* kp = j < L ? key_at(kc, j) : nullptr;
        for (int64_t d = 0; d < D; ++d) kt[d][jj] = kp ? load(kp, d) : 0.0f;
      }
    }
    int64_t r = 0;
#if !defined(GROVE_AVX2_LOOPS)  // (AVX2: 8 rows' halves are all 16 registers; 4 a pass measured 4% faster)
    for (; r + 8 <= R; r += 8) score_rows<8>(qs + r * D, kt, D, a.scale, st + r * width, width);
#endif
    for (; r + 4 <= R; r += 4) score_rows<4>(qs + r * D, kt, D, a.scale, st + r * width, width);
    switch (R - r) {  // a decode step's group of three rows in one pass over the tile
      case 3: score_rows<3>(qs + r * D, kt, D, a.scale, st + r * width, width); break;
      case 2: score_rows<2>(qs + r * D, kt, D, a.scale, st + r * width, width); break;
      case 1: score_rows<1>(qs + r * D, kt, D, a.scale, st + r * width, width); break;
      default: break;
    }
  }

  softmax_rows(a, s, width, R, tok0, q_first, cached, L, t_first, pos_of_new);

  // the weighted sums of the values and the denominators, keys in ascending order
  float* __restrict__ acc = w.acc.data();
  float* __restrict__ den = w.den.data();
  switch (D) {  // head_dim in registers for the common sizes, the values read from the cache
    case 64: values<T, 4>(s, width, vc, offset, j0, L, R, acc, den); break;
    case 128: values<T, 8>(s, width, vc, offset, j0, L, R, acc, den); break;
    default: {
      float* __restrict__ vbuf = w.vrow.data();  // values as fp32 rows first
      for (int64_t j = j0; j < L; ++j)
        for (int64_t d = 0; d < D; ++d) vbuf[j * D + d] = load(key_at(vc, j), d);
      std::memset(acc, 0, sizeof(float) * R * D);
      std::memset(den, 0, sizeof(float) * R);
      for (int64_t j = j0; j < L; ++j)
        for (int64_t r = 0; r < R; ++r) {
          const float p = s[r * width + j];
          for (int64_t d = 0; d < D; ++d) acc[r * D + d] = __builtin_fmaf(p, vbuf[j * D + d], acc[r * D + d]);
          den[r] += p;
        }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    TQ* dst = static_cast<TQ*>(a.out) + ((q_first + tok0 + r / G) * H + head * G + r % G) * D;
    const float inv = 1.0f / den[r];
    for (int64_t d = 0; d < D; ++d) store(dst, d, acc[r * D + d] * inv);
  }
}

// work items: (sequence, kv head, chunk of `chunk_tokens` query tokens), handed out dynamically
struct Item {
  int64_t seq;
  int32_t head, chunk;
};

// Items handed to a thread at a time: a (sequence, chunk)'s kv heads together once there are at
// least two such groups a thread. A block holds its tokens' heads interleaved ([slot][kv head][dim]),
// so one head's rows are a third of the lines the hardware prefetchers pull in; the thread that
// reads the other heads next finds them in its own L2. Measured on an Intel Xeon (2 threads, bf16,
// SmolLM2's heads, AMX path, the two schedules alternating in one process:
// scripts/ab_cpu_attention.py): 16 decodes behind 600 1.22 -> 1.04 ms a layer, behind 1,500 3.23
// -> 2.70, 4 behind 600 0.33 -> 0.28, 16 trees of 8 2.05 -> 1.84; one sequence (three items)
// keeps one head an item (its heads on one thread: 0.13 -> 0.17 ms). Scheduling
// only: every row's arithmetic is the same.
int64_t items_per_grab(const Args& a, int64_t count, int num_threads) {
  return count >= 2 * a.kvh * num_threads ? a.kvh : 1;
}

std::vector<Item> work_items(const Args& a, int64_t num_seqs, int64_t chunk_tokens) {
  std::vector<Item> items;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t n = a.query_start[b + 1] - a.query_start[b];
    for (int64_t c = 0; c * chunk_tokens < n; ++c)
      for (int64_t h = 0; h < a.kvh; ++h) items.push_back(Item{b, static_cast<int32_t>(h), static_cast<int32_t>(c)});
  }
  return items;
}

// ---------------------------------------------------------------------------------------------
// AMX path (CPUs with amx_bf16, bf16 q and cache, head_dim a multiple of 32): TDPBF16PS tiles.
// Every call of such a process takes it (decode, trees and prefill alike), so rows keep agreeing.
//
// Scores: the work item's query rows are the A tiles (16 rows x 32 dims), each 16-key tile is
// transposed into dim pairs x keys (the B tile, as the VDPBF16PS path transposes it), C is a
// [16 rows x 16 keys] fp32 tile. A score is one C element: the hardware's fixed sum over head_dim
// of its own q row and key, whatever else shares the tile. Softmax as on the other paths.
//
// Values as O = P V: P rounded to bf16 (as flash attention does) in [16 rows x 32 keys] A tiles,
// V re-laid into key pairs (B tiles). The hardware's sum over keys has its own grouping (pairs of
// keys, 32 a tile), so a tree node whose ancestors sit at other key indices than its path would
// have in plain decoding could round differently there. Hence the split, by the row's position p
// alone: keys [0, amx_end(p)) take the tiles; keys [amx_end(p), p] are added one at a time, in
// ascending order, in fp32 (a key the row may not see adds nothing). amx_end(p) <= p - AMX_TAIL,
// so for a tree node at depth <= AMX_TAIL the tiles see only its sequence's cached keys, exactly
// the keys (and key indices) they see when the same token is decoded alone: the same bits. Rows
// of a work item with a lower amx_end have zero weights in the tiles past it (exact zeros).
// A tree row deeper than AMX_TAIL is refused (the engine caps draft depth at it) unless its tiled
// keys past the cache are all its ancestors (a causal chunk's rows in a batch with trees).
//
// Measured on an Intel Xeon (Sapphire Rapids, 2 threads, bf16, SmolLM2's 3 kv heads x 3, one
// layer, 30 layers' pools cycled, against the VDPBF16PS path in the same process, alternating):
// 16 trees of 8 behind 600 2.77 -> 2.09-2.17 ms, 16 trees of 14 4.21 -> 3.25-3.38, one tree of 14
// behind 900 0.416 -> 0.33; plain decoding is memory-bound and slower: 16 sequences behind 600
// 1.05 -> 1.15 ms, behind 1,500 2.46 -> 2.62, one behind 900 0.116 -> 0.121.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define GROVE_AMX_ATTENTION 1

constexpr int64_t AMX_TAIL = 32;   // keys at most this close before a row's position stay out of the tiles
constexpr int64_t AMX_KEYS = 32;   // keys per P tile row (32 bf16 = 64 bytes)
constexpr int64_t MAX_ROW_TILES = 4;  // rows per work item <= 64 (chunk tokens = 64 / group, at most 8)
constexpr int64_t K_AHEAD = 2 * TILE;  // keys prefetched ahead (32 to 128 measured alike)
constexpr int64_t V_AHEAD = 4 * TILE;
constexpr int64_t SCORE_TILES = 4;     // key tiles transposed (vector units) before their products (AMX)

// first key past a row's tiled range: a multiple of AMX_KEYS, at most p - AMX_TAIL
inline int64_t amx_end(int64_t p) { return p <= AMX_TAIL ? 0 : (p - AMX_TAIL) / AMX_KEYS * AMX_KEYS; }

// tiles 0-3: C (scores of row tiles 0-3; then output dims), 4: A, 5-7: B
using grove_amx::load_tile_config;
using grove_amx::permitted;

// Scores of RT row tiles against one 16-key tile: kb the key tile's B tiles [chunks][16 pairs][16
// keys], qa the rows [RT * 16][D] (row stride ld bytes); c[rt * 256 + row * 16 + key] the sums
// (a small buffer that stays in L1: a decode's three rows are copied out, not 16 rows stored).
template <int RT>
inline void amx_scores(const uint32_t* kb, const uint16_t* qa, int64_t ld, int64_t chunks, float* c) {
  _tile_zero(0);
  if constexpr (RT > 1) _tile_zero(1);
  if constexpr (RT > 2) _tile_zero(2);
  if constexpr (RT > 3) _tile_zero(3);
  const int64_t rt_rows = 16 * ld / 2;  // elements from one row tile to the next
  for (int64_t ch = 0; ch < chunks; ++ch) {
    _tile_loadd(4, kb + ch * 256, 64);
    _tile_loadd(5, qa + 32 * ch, ld);
    _tile_dpbf16ps(0, 5, 4);
    if constexpr (RT > 1) { _tile_loadd(6, qa + rt_rows + 32 * ch, ld); _tile_dpbf16ps(1, 6, 4); }
    if constexpr (RT > 2) { _tile_loadd(7, qa + 2 * rt_rows + 32 * ch, ld); _tile_dpbf16ps(2, 7, 4); }
    if constexpr (RT > 3) { _tile_loadd(5, qa + 3 * rt_rows + 32 * ch, ld); _tile_dpbf16ps(3, 5, 4); }
  }
  _tile_stored(0, c, 64);
  if constexpr (RT > 1) _tile_stored(1, c + 256, 64);
  if constexpr (RT > 2) _tile_stored(2, c + 512, 64);
  if constexpr (RT > 3) _tile_stored(3, c + 768, 64);
}

// amx_scores<1> for head_dim 64 with the rows' two A tiles already in tiles 5 and 6 (a decode's
// rows are the same for every key tile): the same products in the same order.
inline void amx_scores_held(const uint32_t* kb, float* c) {
  _tile_zero(0);
  _tile_loadd(4, kb, 64);
  _tile_dpbf16ps(0, 5, 4);
  _tile_loadd(7, kb + 256, 64);
  _tile_dpbf16ps(0, 6, 7);
  _tile_stored(0, c, 64);
}

// O of one row tile over `chunks` 32-key chunks for NT output tiles (16 dims each, permuted as
// vb is built): pa [chunks][16 rows][16 key pairs], vb [chunks][ntiles][16 key pairs][16 dims],
// c [NT][16 rows][16] fp32.
template <int NT>
inline void amx_values(const uint32_t* pa, const uint32_t* vb, int64_t chunks, int64_t ntiles, float* c) {
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (NT > 2) _tile_zero(2);
  if constexpr (NT > 3) _tile_zero(3);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const uint32_t* b = vb + ch * ntiles * 256;
    _tile_loadd(4, pa + ch * 256, 64);
    _tile_loadd(5, b, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NT > 1) { _tile_loadd(6, b + 256, 64); _tile_dpbf16ps(1, 4, 6); }
    if constexpr (NT > 2) { _tile_loadd(7, b + 512, 64); _tile_dpbf16ps(2, 4, 7); }
    if constexpr (NT > 3) { _tile_loadd(5, b + 768, 64); _tile_dpbf16ps(3, 4, 5); }
  }
  _tile_stored(0, c, 64);
  if constexpr (NT > 1) _tile_stored(1, c + 256, 64);
  if constexpr (NT > 2) _tile_stored(2, c + 512, 64);
  if constexpr (NT > 3) _tile_stored(3, c + 768, 64);
}

// V's B tiles of the 32 keys from j (all < L): [D / 16][16 key pairs][16 dims], keys 2 p, 2 p + 1
// interleaved by unpacklo / unpackhi of each 32-dim half (see value_dim)
inline void value_tiles(const uint16_t* vc, const int64_t* offset, int64_t j, int64_t L, int64_t C, uint32_t* dst) {
  for (int64_t pr = 0; pr < 16; ++pr, j += 2) {
    if (j + V_AHEAD + 1 < L) prefetch_row(vc + offset[j + V_AHEAD], 32 * C), prefetch_row(vc + offset[j + V_AHEAD + 1], 32 * C);
    const uint16_t* x = vc + offset[j];
    const uint16_t* y = vc + offset[j + 1];
    for (int64_t h = 0; h < C; ++h) {
      const __m512i xv = _mm512_loadu_si512(x + 32 * h), yv = _mm512_loadu_si512(y + 32 * h);
      _mm512_storeu_si512(dst + (2 * h * 16 + pr) * 16, _mm512_unpacklo_epi16(xv, yv));
      _mm512_storeu_si512(dst + ((2 * h + 1) * 16 + pr) * 16, _mm512_unpackhi_epi16(xv, yv));
    }
  }
}

// amx_values<4> for head_dim 64 with V's B tiles built chunk by chunk into a two-chunk ring
// (the same products in the same order): no scratch of the whole range to write and read back.
inline void amx_values_stream(const uint32_t* pa, const uint16_t* vc, const int64_t* offset, int64_t c0, int64_t chunks,
                              int64_t L, uint32_t* ring, float* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    uint32_t* b = ring + (ch & 1) * 4 * 256;
    value_tiles(vc, offset, c0 + ch * AMX_KEYS, L, 2, b);
    _tile_loadd(4, pa + ch * 256, 64);
    _tile_loadd(5, b, 64);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, b + 256, 64);
    _tile_dpbf16ps(1, 4, 6);
    _tile_loadd(7, b + 512, 64);
    _tile_dpbf16ps(2, 4, 7);
    _tile_loadd(5, b + 768, 64);
    _tile_dpbf16ps(3, 4, 5);
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

// The dim of output column col of value tile n: vb's tiles come from unpacklo / unpackhi of two
// keys' 32-dim halves, which interleave 4-dim groups of each 128-bit lane.
inline int64_t value_dim(int64_t n, int64_t col) { return 32 * (n / 2) + 8 * (col / 4) + 4 * (n % 2) + col % 4; }

// RB rows' remaining keys added one at a time in ascending order to their tiled sums (fp32
// weights s[r * width + j], values converted on load: per element one FMA chain) and to their
// denominators. Row r starts at from[r]; before it (and where a row may not see a key) its weight
// is an exact zero, which changes nothing (a sum here is never -0). DV = D / 16 in registers.
template <int RB, int DV>
inline void tail_rows(const float* s, int64_t width, const uint16_t* vc, const int64_t* offset, const int64_t* from,
                      int64_t L, float* acc, float* den) {
  v16f sum[RB][DV];
  int64_t j0 = L;
  for (int r = 0; r < RB; ++r) {
    for (int c = 0; c < DV; ++c) sum[r][c] = load16(acc + r * DV * TILE + c * TILE);
    j0 = from[r] < j0 ? from[r] : j0;
  }
  for (int64_t j = j0; j < L; ++j) {
    float wt[RB];
    bool any = false;
    for (int r = 0; r < RB; ++r) {
      wt[r] = j >= from[r] ? s[r * width + j] : 0.0f;
      any |= wt[r] != 0.0f;
    }
    if (!any) continue;
    const uint16_t* vp = vc + offset[j];
    v16f v[DV];
    for (int c = 0; c < DV; ++c) v[c] = load16(vp + c * TILE);
    for (int r = 0; r < RB; ++r) {
      for (int c = 0; c < DV; ++c) sum[r][c] = wt[r] * v[c] + sum[r][c];
      den[r] += wt[r];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < DV; ++c) store16(acc + r * DV * TILE + c * TILE, sum[r][c]);
}

// All R rows, RB at a time (D = 16 * DV), then the rest; generic D one row at a time through memory.
template <int DV>
void tail(const float* s, int64_t width, const uint16_t* vc, const int64_t* offset, const int64_t* from, int64_t L,
          int64_t R, float* acc, float* den) {
  constexpr int RB = DV <= 4 ? 4 : 2;
  int64_t r = 0;
  for (; r + RB <= R; r += RB) tail_rows<RB, DV>(s + r * width, width, vc, offset, from + r, L, acc + r * DV * TILE, den + r);
  for (; r < R; ++r) tail_rows<1, DV>(s + r * width, width, vc, offset, from + r, L, acc + r * DV * TILE, den + r);
}

void tail_any_d(const float* s, int64_t width, const uint16_t* vc, const int64_t* offset, const int64_t* from,
                int64_t L, int64_t R, int64_t D, float* acc, float* den) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = from[r]; j < L; ++j) {
      const float wt = s[r * width + j];
      if (wt == 0.0f) continue;
      const uint16_t* vp = vc + offset[j];
      for (int64_t d = 0; d < D; d += TILE) store16(acc + r * D + d, wt * load16(vp + d) + load16(acc + r * D + d));
      den[r] += wt;
    }
}

struct AmxScratch {
  std::vector<uint16_t> qa;  // [RT * 16][D]: the rows (A tiles of the scores), padding rows zero
  std::vector<uint32_t> kb;  // [D / 32][16 pairs][16 keys]: one key tile's B tiles
  std::vector<float> s;      // [R][width]: scores, then weights
  std::vector<uint32_t> pa;  // [RT][chunks][16 rows][16 key pairs]: P's A tiles
  std::vector<uint32_t> vb;  // [chunks][D / 16][16 key pairs][16 dims]: V's B tiles
  std::vector<float> acc;    // [rows][D]
  std::vector<int64_t> offset;
  alignas(64) float c[4 * 256];
};

// One work item (sequence, kv head, chunk of tokens) on AMX tiles: bf16 q, cache and out. Returns
// false for a tree row deeper than AMX_TAIL (its tiled keys would include tree keys).
bool attend_item_amx(const Args& a, int64_t seq, int64_t head, int64_t chunk, int64_t chunk_tokens, AmxScratch& w) {
  const int64_t D = a.head_dim, G = a.group, H = a.kvh * G, C = D / 32, NV = D / 16;
  const int64_t q_first = a.query_start[seq], n_new = a.query_start[seq + 1] - q_first;
  const int64_t cached = a.num_cached[seq];
  const int64_t tok0 = chunk * chunk_tokens;
  const int64_t ntok = n_new - tok0 < chunk_tokens ? n_new - tok0 : chunk_tokens;
  const int64_t L = cached + tok0 + ntok;  // keys the chunk may see (later ones would add exact zeros)
  const int64_t R = ntok * G, RT = (R + 15) / 16;
  const uint16_t* q = static_cast<const uint16_t*>(a.q);
  const uint16_t* kc = static_cast<const uint16_t*>(a.k);
  const uint16_t* vc = static_cast<const uint16_t*>(a.v);

  // each row's position (a tree node's by depth), first visible position, and tiled range
  auto pos_of_new = [&](int64_t i) -> int64_t {
    if (a.positions) return a.positions[q_first + i];
    if (!a.tree_mask) return cached + i;
    const uint8_t* m = a.tree_mask + (q_first + i) * a.mask_stride;
    int64_t depth = -1;  // the row sees itself and its ancestors
    for (int64_t j = 0; j < n_new; ++j) depth += m[j] != 0;
    return cached + depth;
  };
  int64_t ae[16 * MAX_ROW_TILES] = {}, end_max[MAX_ROW_TILES] = {}, first_key = cached;
  for (int64_t i = tok0; i < tok0 + ntok; ++i) {
    const int64_t p = pos_of_new(i);
    const int64_t e = amx_end(p);
    if (a.tree_mask && e > cached) {  // tiled keys past the cache must be the row's ancestors, as a chain's are
      const uint8_t* m = a.tree_mask + (q_first + i) * a.mask_stride;
      for (int64_t n = 0; n < e - cached; ++n)
        if (!m[n]) return false;
    }
    if (a.window > 0) {
      const int64_t lo = p - a.window + 1;
      first_key = lo < first_key ? (lo > 0 ? lo : 0) : first_key;
    }
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r = (i - tok0) * G + g;
      ae[r] = e;
      end_max[r / 16] = e > end_max[r / 16] ? e : end_max[r / 16];
    }
  }
  if (a.window <= 0) first_key = 0;
  const int64_t t_first = first_key / TILE, j0 = t_first * TILE;  // keys before j0: zero weight for every row
  const int64_t c0 = first_key / AMX_KEYS * AMX_KEYS;  // first key of the tiled value chunks
  const int64_t tiles = (L + TILE - 1) / TILE, width = (L + AMX_KEYS - 1) / AMX_KEYS * AMX_KEYS;
  int64_t tiled_end = c0;
  for (int64_t t = 0; t < RT; ++t) tiled_end = end_max[t] > tiled_end ? end_max[t] : tiled_end;

  const int64_t* table = a.block_tables + seq * a.max_blocks;
  w.offset.resize(L - c0);
  int64_t* __restrict__ offset = w.offset.data() - c0;  // element offset of key/value j of this kv head
  for (int64_t j = c0, blk = c0 / a.block_size, slot = c0 % a.block_size; j < L; ++j) {
    offset[j] = table[blk] * a.block_stride + (slot * a.kvh + head) * D;
    if (++slot == a.block_size) slot = 0, ++blk;
  }

  // scores: the rows as A tiles, each 16-key tile transposed into dim pairs x keys (B tiles)
  w.qa.assign(RT * 16 * D, 0);
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(w.qa.data() + r * D, q + ((q_first + tok0 + r / G) * H + head * G + r % G) * D, D * 2);
  w.kb.resize(SCORE_TILES * C * 256);
  w.s.resize(R * width);
  float* __restrict__ s = w.s.data();
  for (int64_t j = j0; j < j0 + K_AHEAD && j < L; ++j) prefetch_row(kc + offset[j], D);
  const bool held = RT == 1 && C == 2;
  if (held) {
    _tile_loadd(5, w.qa.data(), D * 2);
    _tile_loadd(6, w.qa.data() + 32, D * 2);
  }
  for (int64_t t0 = t_first; t0 < tiles; t0 += SCORE_TILES) {
    const int64_t t1 = t0 + SCORE_TILES < tiles ? t0 + SCORE_TILES : tiles;
    for (int64_t t = t0; t < t1; ++t) {  // B tiles of SCORE_TILES key tiles, then their products
      for (int64_t j = t * TILE + K_AHEAD; j < t * TILE + K_AHEAD + TILE && j < L; ++j) prefetch_row(kc + offset[j], D);
      for (int64_t ch = 0; ch < C; ++ch) {
        v16f m[TILE];
        for (int jj = 0; jj < TILE; ++jj) {
          const int64_t j = t * TILE + jj;
          if (j < L) std::memcpy(&m[jj], kc + offset[j] + 32 * ch, sizeof m[jj]);
          else m[jj] = v16f{};
        }
        transpose16(m);
        std::memcpy(w.kb.data() + ((t - t0) * C + ch) * 256, m, sizeof m);
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      const uint32_t* kb = w.kb.data() + (t - t0) * C * 256;
      switch (held ? 0 : RT) {
        case 0: amx_scores_held(kb, w.c); break;
        case 1: amx_scores<1>(kb, w.qa.data(), D * 2, C, w.c); break;
        case 2: amx_scores<2>(kb, w.qa.data(), D * 2, C, w.c); break;
        case 3: amx_scores<3>(kb, w.qa.data(), D * 2, C, w.c); break;
        default: amx_scores<4>(kb, w.qa.data(), D * 2, C, w.c); break;
      }
      for (int64_t r = 0; r < R; ++r) store16(s + r * width + t * TILE, load16(w.c + r * 16) * a.scale);
    }
  }
  // (without a window the positions of the step's tokens do not matter to the softmax)
  softmax_rows(a, s, width, R, tok0, q_first, cached, L, t_first,
               [&](int64_t i) { return a.positions ? a.positions[q_first + i] : cached + i; });

  // P: the tiled keys' weights rounded to bf16 (A tiles), their sum the tiled denominator;
  // past the row's amx_end the fp32 weights stay in s for the one-at-a-time sums
  const int64_t chunks = (tiled_end - c0) / AMX_KEYS;
  w.pa.assign(RT * (chunks > 0 ? chunks : 0) * 256, 0u);
  alignas(64) float dens[16 * MAX_ROW_TILES];
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t r = 0; r < R; ++r) {
    const float* sr = s + r * width;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t ch = 0; ch < (ae[r] - c0) / AMX_KEYS; ++ch) {  // keys below j0 were not scored: weight 0
      const int64_t j = c0 + ch * AMX_KEYS;
      const __mmask16 m0 = _mm512_cmpge_epi32_mask(_mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j))),
                                                    _mm512_set1_epi32(static_cast<int32_t>(j0)));
      const __mmask16 m1 = _mm512_cmpge_epi32_mask(
          _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j + TILE))), _mm512_set1_epi32(static_cast<int32_t>(j0)));
      const __m512 x0 = _mm512_maskz_loadu_ps(m0, sr + j), x1 = _mm512_maskz_loadu_ps(m1, sr + j + TILE);
      const __m512bh pb = _mm512_cvtne2ps_pbh(x1, x0);  // keys j .. j + 31 in order: dword p = keys 2 p, 2 p + 1
      _mm512_storeu_si512(w.pa.data() + ((r / 16) * chunks + ch) * 256 + (r % 16) * 16, (__m512i)pb);
      const __m512i bits = (__m512i)pb;
      sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)));  // even keys' rounded weights
      sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u)))));
    }
    dens[r] = _mm512_reduce_add_ps(sum);
  }

  // tiled sums (V's B tiles built chunk by chunk), then each row's remaining keys one at a time
  w.acc.resize(RT * 16 * D);
  float* __restrict__ acc = w.acc.data();
  auto to_acc = [&](int64_t rt, int64_t n0, int64_t nt) {  // C tiles (dims permuted as built) -> acc rows
    for (int64_t l = 0; l < 16; ++l)
      for (int64_t n = 0; n < nt; ++n)
        for (int64_t col = 0; col < 16; ++col) acc[(rt * 16 + l) * D + value_dim(n0 + n, col)] = w.c[(n * 16 + l) * 16 + col];
  };
  if (RT == 1 && NV == 4) {  // a decode's rows, head_dim 64: the four C tiles stay live, V streams through a ring
    w.vb.resize(2 * 4 * 256);
    if (chunks > 0) {
      amx_values_stream(w.pa.data(), vc, offset, c0, chunks, L, w.vb.data(), w.c);
      to_acc(0, 0, 4);
    } else {
      std::memset(acc, 0, sizeof(float) * 16 * D);
    }
  } else {
    w.vb.resize((chunks > 0 ? chunks : 0) * NV * 256);
    for (int64_t ch = 0; ch < chunks; ++ch) value_tiles(vc, offset, c0 + ch * AMX_KEYS, L, C, w.vb.data() + ch * NV * 256);
    for (int64_t rt = 0; rt < RT; ++rt) {
      const int64_t nch = (end_max[rt] > c0 ? end_max[rt] - c0 : 0) / AMX_KEYS;
      if (nch == 0) {
        std::memset(acc + rt * 16 * D, 0, sizeof(float) * 16 * D);
        continue;
      }
      for (int64_t n0 = 0; n0 < NV; n0 += 4) {
        const int64_t nt = NV - n0 < 4 ? NV - n0 : 4;
        const uint32_t* pa = w.pa.data() + rt * chunks * 256;
        const uint32_t* vb = w.vb.data() + n0 * 256;
        switch (nt) {  // vb's chunk stride is NV tiles
          case 4: amx_values<4>(pa, vb, nch, NV, w.c); break;
          case 3: amx_values<3>(pa, vb, nch, NV, w.c); break;
          case 2: amx_values<2>(pa, vb, nch, NV, w.c); break;
          default: amx_values<1>(pa, vb, nch, NV, w.c); break;
        }
        to_acc(rt, n0, nt);
      }
    }
  }
  int64_t from[16 * MAX_ROW_TILES];
  for (int64_t r = 0; r < R; ++r) from[r] = ae[r] > j0 ? ae[r] : j0;
  switch (D) {  // head_dim in registers for the common sizes
    case 64: tail<4>(s, width, vc, offset, from, L, R, acc, dens); break;
    case 128: tail<8>(s, width, vc, offset, from, L, R, acc, dens); break;
    default: tail_any_d(s, width, vc, offset, from, L, R, D, acc, dens); break;
  }
  for (int64_t r = 0; r < R; ++r) {
    uint16_t* dst = static_cast<uint16_t*>(a.out) + ((q_first + tok0 + r / G) * H + head * G + r % G) * D;
    const float inv = 1.0f / dens[r];
    for (int64_t d = 0; d < D; ++d) store(dst, d, acc[r * D + d] * inv);
  }
  return true;
}
#endif  // AMX

// 0 = done, 3 = a tree row deeper than AMX_TAIL whose tiled keys would include tree keys.
// use_amx = 0 keeps a bf16 call off the AMX path (for side-by-side measurements only: a process
// must attend every call on one path, or rows stop agreeing).
template <typename T, typename TQ>
int attend_all(const Args& a, int64_t num_seqs, int num_threads, bool use_amx) {
#ifdef GROVE_AMX_ATTENTION
  if constexpr (std::is_same_v<T, uint16_t> && std::is_same_v<TQ, uint16_t>) {
    if (use_amx && a.head_dim % 32 == 0 && a.group <= 16 * MAX_ROW_TILES && permitted()) {
      const int64_t chunk_tokens = std::min<int64_t>(CHUNK_TOKENS, 16 * MAX_ROW_TILES / a.group);
      const std::vector<Item> items = work_items(a, num_seqs, chunk_tokens);
      const int64_t count = static_cast<int64_t>(items.size());
      const int64_t grab = items_per_grab(a, count, num_threads);
      std::atomic<int> refused{0};
#pragma omp parallel num_threads(num_threads)
      {
        static thread_local AmxScratch w;
        load_tile_config();
#pragma omp for schedule(dynamic, grab)
        for (int64_t i = 0; i < count; ++i)
          if (!attend_item_amx(a, items[i].seq, items[i].head, items[i].chunk, chunk_tokens, w)) refused = 1;
        _tile_release();
      }
      return refused ? 3 : 0;
    }
  }
#endif
  (void)use_amx;
  const std::vector<Item> items = work_items(a, num_seqs, CHUNK_TOKENS);
  const int64_t count = static_cast<int64_t>(items.size());
  const int64_t grab = items_per_grab(a, count, num_threads);
#pragma omp parallel num_threads(num_threads)
  {
    static thread_local Scratch w;  // kept across calls: no allocation (and page faults) per layer
#pragma omp for schedule(dynamic, grab)
    for (int64_t i = 0; i < count; ++i) attend_item<T, TQ>(a, items[i].seq, items[i].head, items[i].chunk, w);
  }
  return 0;
}

}  // namespace

// 1 when bf16 q against a bf16 cache is scored by VDPBF16PS (score_rows_bf16), else 0.
extern "C" int grove_attention_bf16_dot() { return BF16_DOT ? 1 : 0; }

// The keys before a row's position summed one at a time on the AMX path: the deepest tree it takes.
extern "C" int grove_attention_amx_tail() {
#ifdef GROVE_AMX_ATTENTION
  return static_cast<int>(AMX_TAIL);
#else
  return 0;
#endif
}

// 1 when bf16 q against a bf16 cache (head_dim a multiple of 32) runs on AMX tiles, else 0.
extern "C" int grove_attention_amx() {
#ifdef GROVE_AMX_ATTENTION
  return permitted() ? 1 : 0;
#else
  return 0;
#endif
}

// kv_dtype: 0 fp32, 1 bf16, 2 fp16; q_f32: q and out are fp32 (else the cache's dtype); use_amx: 1
// where the serving path is meant (see attend_all). 0 = done, 3 = a tree too deep for the AMX path.
extern "C" int grove_paged_attention(
    const void* q, const void* k, const void* v, int32_t kv_dtype, int32_t q_f32, int64_t block_stride,
    int64_t block_size, int64_t kvh, int64_t group, int64_t head_dim, const int64_t* block_tables,
    int64_t max_blocks, const int64_t* query_start, const int64_t* num_cached, int64_t num_seqs,
    const uint8_t* tree_mask, int64_t mask_stride, const int64_t* positions, int64_t window, float scale, void* out,
    int32_t num_threads, int32_t use_amx) {
  const Args a{q, k, v, block_stride, block_size, kvh, group, head_dim, block_tables, max_blocks,
               query_start, num_cached, tree_mask, mask_stride, positions, window, scale, out};
  switch (kv_dtype * 2 + (q_f32 ? 1 : 0)) {
    case 0: case 1: return attend_all<float, float>(a, num_seqs, num_threads, use_amx != 0);
    case 2: return attend_all<uint16_t, uint16_t>(a, num_seqs, num_threads, use_amx != 0);
    case 3: return attend_all<uint16_t, float>(a, num_seqs, num_threads, use_amx != 0);
    case 4: return attend_all<_Float16, _Float16>(a, num_seqs, num_threads, use_amx != 0);
    case 5: return attend_all<_Float16, float>(a, num_seqs, num_threads, use_amx != 0);
    default: return 1;
  }
}
