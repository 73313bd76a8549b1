// bf16 products on the CPU (AVX512-BF16, or AVX2 + FMA): Grove's replacement for torch's bf16 matmul in decode.
//
//   y[t, o] = bf16( sum_i x[t, i] * W[o, i] )            (optionally y = bf16(residual + that))
//
// Weights are packed once at load time, 32 output rows side by side per pair of inputs (the layout
// VDPBF16PS multiplies): packed[p][i / 2][r][i % 2] = W[32 p + r][i], rows past `out` zero. One
// register then holds 16 output rows of one token and the sum over inputs runs along the register
// lanes, so no horizontal reduction is ever needed.
//
// Row invariance is the contract, as for cpu_attention.cpp: an output element (t, o) is one lane
// of one accumulator that starts at zero and takes VDPBF16PS over input pairs 0, 1, 2, ... in
// order, whatever the number of tokens, the tile it falls in or the thread that runs it. So a
// token gets the same bits alone as inside a lookahead tree or a batch of 16. (torch's bf16
// products do not promise that: F.linear's bits change with the number of rows.)
//
// Why: decoding reads every weight once per step and computes little with it. torch's bf16 matmul
// takes 26-32 ms for SmolLM2's products at 1 token on an AMD EPYC without AMX (F.linear 16-24);
// this kernel 5 ms (the weights streamed at ~50 GB/s), 8-10 ms at 16 tokens, and stays ahead up to
// 512 tokens (95 vs 123 ms at 256) where it is bound by the multiply rate.
//
// Two paths over the same packed weights, chosen per weight at packing (so a weight's rows always
// take the same one, and row invariance holds within it):
// - AMX (CPUs with amx_bf16, inputs a multiple of 32): TDPBF16PS on 16-token x 16-row tiles. The
//   packed panel already is the B tile's layout (16 input pairs x 16 rows x 2, at a row stride of
//   the panel's 32 rows), so no second copy of the weights. Every token runs in a 16-row A tile
//   (a step's tail rows padded with zeros, one token alone included), and an output element is one
//   element of one C tile that starts at zero and takes TDPBF16PS over input chunks 0, 1, 2, ... in
//   order: row-invariant by construction, as below. On an Intel Xeon (Sapphire Rapids), SmolLM2's
//   products over 30 distinct layers (scripts/bench_cpu_linear.py): AMX 14.6 ms at 1 token, 13.8 at
//   16, 18.1 at 32, 58.5 at 128; VDPBF16PS 11.9, 32.6, 64.7, 247; torch's AMX matmul 24.2, 23.8,
//   37.2, 43.9. A lone token pays ~20% for its padded tile (memory-bound either way; two panels
//   per pass for more independent tiles measured slower).
// - VDPBF16PS (AVX512-BF16, below): the path on CPUs without AMX.
// A third path takes the same packed weights on CPUs with AVX2 and FMA but no AVX512-BF16 (AMD Zen
// 2/3, older Intel): each loaded pair register gives its even and odd inputs' 8 rows as fp32 (a
// shift and a mask), and an output element is one lane of one accumulator that takes an FMA for
// input 0, then 1, 2, ... in order: row-invariant by construction, as the others. There torch's
// bf16 products are not (they change a row's bits with the step's width), and slow. SmolLM2's
// products with the lm_head, 2 threads, on an AVX2-only AMD EPYC (Zen 1: family 23, model 1):
// this path 16 ms at 1 token, 15 at 2, 43 at 8, 83 at 16; torch's bf16 32, 60, 233, 458; fp32
// (F.linear / W @ X) 55, 43, 111, 102. Tiles of 6 tokens there (MAX_C below), not 14: 4-6 tokens
// take half a panel at a time (12 accumulators), 2-3 a whole one.
//
// Tiles: a thread takes a contiguous range of panels (32 rows each), in groups of 6 that stay in L2
// while every tile of up to 14 tokens passes over them, so the weights come from memory once per
// step. A tail tile of few tokens (T = 15: 14 + 1) runs over several panels at once, so it has
// ~12 independent accumulators to cover the multiply's latency (measured 0.3-0.5 ms off the
// model's products at 15-16 tokens in some runs, within the noise in others). A step's cost jumps past
// each multiple of 14 tokens (with tiles of 12, the model's products: 12 tokens 6.4 ms, 13 7.8; 24
// 9.1, 25 10.9), which the speculator aligns its steps to (engine.layers.step_tile).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#include <omp.h>

#define GROVE_LINEAR_PATH 1  // grove_linear_supported(): VDPBF16PS

namespace {

constexpr int PANEL = 32;  // output rows per panel: two registers of 16 fp32
constexpr int MAX_C = 14;  // tokens per tile (2 x 14 accumulators + 2 weights + 1 broadcast of 32 registers)
constexpr int PREFETCH = 48;  // input pairs ahead (6 KiB of the panel). The model's products at 16 and 24 tokens: 16 pairs 8.3 / 10.1 ms, 48 7.4 / 8.9, 96 7.3 / 8.7; alike at 1-12
// input pairs ahead (24 KiB) that a tile streaming its panels from memory also asks into L2, when it
// has more than one token: the weights' reads then overlap the tile's multiplies, where with the L1
// prefetch alone the two costs add up. SmolLM2's products on an AMD EPYC (Zen 4), 30 distinct
// layers, the builds alternating in one process (scripts/ab_cpu_linear.py): 8 tokens 9.3 -> 6.8 ms,
// 14 11.7 -> 9.4, 16 13.6 -> 11.0, 28 18.7 -> 16.1, 48 29.0 -> 26.7; 1 token alike (6.4 / 6.6), as
// were 96 and 384 pairs ahead (768 a little slower)
constexpr int PREFETCH_L2 = 192;

// fp32 -> bf16, rounded to nearest even as torch's .to(torch.bfloat16) does (denormals kept)
inline __m256i to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

inline __m512 from_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

// 16 output rows of one token: rounded (+ the residual's 16, rounded again) and stored; `rows` < 16
// stores only the first rows (the panel past `out`)
inline void store(__m512 acc, uint16_t* y, int rows, bool add_residual) {
  const __mmask16 m = rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (rows > 0 ? rows : 0)) - 1);
  __m256i h = to_bf16(acc);
  if (add_residual) h = to_bf16(_mm512_add_ps(from_bf16(h), from_bf16(_mm256_maskz_loadu_epi16(m, y))));
  _mm256_mask_storeu_epi16(y, m, h);
}

// C tokens x P panels (P > 1 only for small C: a tile needs ~12 independent accumulators to hide
// VDPBF16PS's latency, and interleaving panels changes no element's order of sums).
// x32: the tile's first token as input pairs (row stride xs pairs); w: the first panel ([kp_n][32]
// pairs, the next panels follow at kp_n * 32); y: the tile's first token's output at the first
// panel's first row; rows: output rows left from there (the last panel may be cut short); stream:
// the tile is the first over its panels (it reads them from memory; later tiles find them in L2).
template <int C, int P>
void tile(const uint32_t* __restrict w, const uint32_t* __restrict x32, int64_t xs, int64_t kp_n, uint16_t* y,
          int64_t ys, int64_t rows, bool add_residual, bool stream) {
  __m512 acc[P][2][C];
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < C; ++c) acc[p][0][c] = acc[p][1][c] = _mm512_setzero_ps();
  const int64_t panel_pairs = kp_n * PANEL;
  for (int64_t kp = 0; kp < kp_n; ++kp) {
    __m512bh wv[P][2];
#pragma GCC unroll 6
    for (int p = 0; p < P; ++p) {
      const uint32_t* wp = w + p * panel_pairs + kp * PANEL;
      wv[p][0] = (__m512bh)_mm512_loadu_si512(wp);
      wv[p][1] = (__m512bh)_mm512_loadu_si512(wp + 16);
      _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH * PANEL), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH * PANEL + 16), _MM_HINT_T0);
      if (C > 1 && stream) {
        _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH_L2 * PANEL), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH_L2 * PANEL + 16), _MM_HINT_T1);
      }
    }
#pragma GCC unroll 14
    for (int c = 0; c < C; ++c) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(x32[c * xs + kp]));
#pragma GCC unroll 6
      for (int p = 0; p < P; ++p) {
        acc[p][0][c] = _mm512_dpbf16_ps(acc[p][0][c], wv[p][0], b);
        acc[p][1][c] = _mm512_dpbf16_ps(acc[p][1][c], wv[p][1], b);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < C; ++c) {
      const int64_t left = rows - p * PANEL;
      store(acc[p][0][c], y + c * ys + p * PANEL, static_cast<int>(left < 16 ? left : 16), add_residual);
      store(acc[p][1][c], y + c * ys + p * PANEL + 16, static_cast<int>(left < 32 ? left - 16 : 16), add_residual);
    }
}

// Panels side by side for a tile of c tokens: enough for 12 accumulators, within the registers
constexpr int panels_for(int c) { return c >= 6 ? 1 : c >= 3 ? 2 : c == 2 ? 3 : 6; }
constexpr int MAX_P = 6;

template <int C, int P>
void tile_panels(int np, const uint32_t* w, const uint32_t* x32, int64_t xs, int64_t kp_n, uint16_t* y, int64_t ys,
                 int64_t rows, bool add_residual, bool stream) {
  if constexpr (P > 1) {
    if (np < P) return tile_panels<C, P - 1>(np, w, x32, xs, kp_n, y, ys, rows, add_residual, stream);
  }
  tile<C, P>(w, x32, xs, kp_n, y, ys, rows, add_residual, stream);
}

// A tile of c tokens over np <= panels_for(c) consecutive panels
void run_tile(int c, int np, const uint32_t* w, const uint32_t* x32, int64_t xs, int64_t kp_n, uint16_t* y,
              int64_t ys, int64_t rows, bool add_residual, bool stream) {
  switch (c) {
#define TILE_CASE(n) \
  case n: tile_panels<n, panels_for(n)>(np, w, x32, xs, kp_n, y, ys, rows, add_residual, stream); break;
    TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6) TILE_CASE(7)
    TILE_CASE(8) TILE_CASE(9) TILE_CASE(10) TILE_CASE(11) TILE_CASE(12) TILE_CASE(13) TILE_CASE(14)
#undef TILE_CASE
  }
}

// HF's RMSNorm of one row, in its arithmetic: r = 1 / sqrt(mean(x^2) + eps) in fp32, n = bf16(x r),
// out = bf16(w n). The sum of squares runs over 16-lane partial sums in input order, then their
// lanes in a fixed order: the row's own arithmetic only (torch's mean sums in another order, so a
// rare element differs from the unfused path by one bf16 rounding).
void rms_norm_row(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out) {
  __m512 sq = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    sq = _mm512_fmadd_ps(v, v, sq);
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    const __m512 v = from_bf16(_mm256_maskz_loadu_epi16(m, x + i));
    sq = _mm512_fmadd_ps(v, v, sq);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sq);
  float sum = 0.0f;
  for (float l : lanes) sum += l;
  const __m512 r = _mm512_set1_ps(1.0f / std::sqrt(sum / static_cast<float>(n) + eps));
  for (i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 normed = from_bf16(to_bf16(_mm512_mul_ps(from_bf16(_mm256_maskz_loadu_epi16(m, x + i)), r)));
    const __m512 scaled = _mm512_mul_ps(from_bf16(_mm256_maskz_loadu_epi16(m, w + i)), normed);
    _mm256_mask_storeu_epi16(out + i, m, to_bf16(scaled));
  }
}

// The driver's hooks: the tiles read x's bf16 pairs in place (normalized rows from a scratch)
using XElem = uint16_t;
constexpr bool COPY_INPUTS = false;
inline const XElem* in_place(const uint16_t* x) { return x; }

inline void prepare_row(const uint16_t* x, const uint16_t* norm_w, int64_t in, float eps, uint16_t* out) {
  rms_norm_row(x, norm_w, in, eps, out);
}

inline void run_tile(int c, int np, const uint32_t* w, const uint16_t* x, int64_t xs, int64_t kp_n, uint16_t* y,
                     int64_t ys, int64_t rows, bool add_residual, bool stream) {
  run_tile(c, np, w, reinterpret_cast<const uint32_t*>(x), xs / 2, kp_n, y, ys, rows, add_residual, stream);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA path (no AVX512-BF16): the same packed weights and driver, 8 fp32 lanes a register
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <omp.h>

#include "cpu_bf16.h"

#define GROVE_LINEAR_PATH 2  // grove_linear_supported(): AVX2 + FMA

namespace {

constexpr int PANEL = 32;  // output rows per panel: four registers of 8 fp32
// tokens per tile: 6 x 2 accumulators of 8 rows over half a panel (half_tile); 2-3 tokens take a
// whole panel (3 x 4 accumulators), a lone token 3 panels
constexpr int MAX_C = 6;
constexpr int PREFETCH = 48;      // input pairs ahead into L1 (6 KiB of the panel)
constexpr int PREFETCH_L2 = 192;  // and into L2, for a tile of several tokens streaming its panels
constexpr int MAX_P = 6;          // panels a thread keeps in L2 while every token tile passes over them

// The tiles take the tokens' inputs as fp32 (converted once per call, so an input is one
// broadcast load); the weights stay bf16 pairs in memory
using XElem = float;
constexpr bool COPY_INPUTS = true;
inline const XElem* in_place(const uint16_t*) { return nullptr; }  // never: the inputs are always copied

using grove_bf16::bf16_to_float;
using grove_bf16::float_to_bf16;
using grove_bf16::from_bf16;
using grove_bf16::to_bf16;

inline __m128i load8(const uint16_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// 8 output rows of one token: rounded (+ the residual's 8, rounded again) and stored; `rows` < 8
// stores only the first rows (the panel past `out`)
inline void store(__m256 acc, uint16_t* y, int64_t rows, bool add_residual) {
  if (rows <= 0) return;
  if (rows >= 8) {
    __m128i h = to_bf16(acc);
    if (add_residual) h = to_bf16(_mm256_add_ps(from_bf16(h), from_bf16(load8(y))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), h);
    return;
  }
  alignas(16) uint16_t part[8] = {};
  std::memcpy(part, y, static_cast<size_t>(rows) * 2);
  __m128i h = to_bf16(acc);
  if (add_residual) h = to_bf16(_mm256_add_ps(from_bf16(h), from_bf16(load8(part))));
  _mm_store_si128(reinterpret_cast<__m128i*>(part), h);
  std::memcpy(y, part, static_cast<size_t>(rows) * 2);
}

// C tokens x P panels, as the VDPBF16PS tile (arguments alike, but x: the first token's inputs as
// fp32, row stride xs). A word of a packed panel holds one row's input pair (even input low, odd
// high): per input pair and 8 rows, one load, then its low halves shifted up and its high halves
// masked are the weights as fp32, exactly, and each token takes two FMAs (input 2 kp, then 2 kp + 1).
// On an AMD EPYC (Zen 1: one 256-bit FMA a cycle, 5 cycles' latency, ~44 GFLOPS a core at 2.8 GHz)
// a wide step runs at ~75% of that here, ~88% in half_tile below (fewer conversions and broadcasts
// an FMA): SmolLM2's products, 30 layers, 2 threads (scripts/ab_cpu_linear.py, bit-equal):
// 8 tokens 33.5 -> 30.2 ms, 16 57.2 -> 49.3, 64 233 -> 202.
template <int C, int P>
void tile(const uint32_t* __restrict w, const float* __restrict x, int64_t xs, int64_t kp_n, uint16_t* y,
          int64_t ys, int64_t rows, bool add_residual, bool stream) {
  // (every loop over the accumulators unrolled: else GCC keeps the array in memory, a store each)
  __m256 acc[P][4][C];
#pragma GCC unroll 3
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
#pragma GCC unroll 3
      for (int c = 0; c < C; ++c) acc[p][j][c] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const int64_t panel_pairs = kp_n * PANEL;
  for (int64_t kp = 0; kp < kp_n; ++kp) {
    __m256 xe[C], xo[C];  // the tokens' inputs 2 kp and 2 kp + 1, broadcast
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c) {
      xe[c] = _mm256_broadcast_ss(x + c * xs + 2 * kp);
      xo[c] = _mm256_broadcast_ss(x + c * xs + 2 * kp + 1);
    }
#pragma GCC unroll 3
    for (int p = 0; p < P; ++p) {
      const uint32_t* wp = w + p * panel_pairs + kp * PANEL;
      _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH * PANEL), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH * PANEL + 16), _MM_HINT_T0);
      if (C > 1 && stream) {
        _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH_L2 * PANEL), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH_L2 * PANEL + 16), _MM_HINT_T1);
      }
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {  // rows 8 j .. 8 j + 7 of the panel: input 2 kp, then 2 kp + 1
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 8 * j));
        const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
#pragma GCC unroll 3
        for (int c = 0; c < C; ++c) acc[p][j][c] = _mm256_fmadd_ps(wo, xo[c], _mm256_fmadd_ps(we, xe[c], acc[p][j][c]));
      }
    }
  }
#pragma GCC unroll 3
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 3
    for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j)
        store(acc[p][j][c], y + c * ys + p * PANEL + 8 * j, rows - p * PANEL - 8 * j, add_residual);
}

// Panels side by side for a tile of c tokens: a lone token streams 3 (12 accumulators)
constexpr int panels_for(int c) { return c >= 2 ? 1 : 3; }

template <int C, int P>
void tile_panels(int np, const uint32_t* w, const float* x, int64_t xs, int64_t kp_n, uint16_t* y, int64_t ys,
                 int64_t rows, bool add_residual, bool stream) {
  if constexpr (P > 1) {
    if (np < P) return tile_panels<C, P - 1>(np, w, x, xs, kp_n, y, ys, rows, add_residual, stream);
  }
  tile<C, P>(w, x, xs, kp_n, y, ys, rows, add_residual, stream);
}

// C tokens (4-6) x half a panel (16 rows, half h): 2 x C accumulators, as the tile above (one lane
// of one accumulator per output element, input 2 kp then 2 kp + 1, in order), but per input pair 2
// weight loads, 4 conversions and 4 C FMAs, the broadcasts loaded as they are used: 15 of 16
// registers. w: the panel's first pair of row 16 h; y, rows: from the half's first row.
template <int C>
void half_tile(const uint32_t* __restrict w, int h, const float* __restrict x, int64_t xs, int64_t kp_n,
               uint16_t* y, int64_t ys, int64_t rows, bool add_residual, bool stream) {
  __m256 acc[2][C];
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j)
#pragma GCC unroll 6
    for (int c = 0; c < C; ++c) acc[j][c] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t kp = 0; kp < kp_n; ++kp) {
    const uint32_t* wp = w + kp * PANEL;
    _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH * PANEL), _MM_HINT_T0);
    if (stream && h == 0) {  // the whole panel's lines: the second half finds them in L2
      _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH_L2 * PANEL), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(wp + PREFETCH_L2 * PANEL + 16), _MM_HINT_T1);
    }
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 8));
    const __m256 we0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
    const __m256 we1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
#pragma GCC unroll 6
    for (int c = 0; c < C; ++c) {
      const __m256 b = _mm256_broadcast_ss(x + c * xs + 2 * kp);
      acc[0][c] = _mm256_fmadd_ps(we0, b, acc[0][c]);
      acc[1][c] = _mm256_fmadd_ps(we1, b, acc[1][c]);
    }
    const __m256 wo0 = _mm256_castsi256_ps(_mm256_and_si256(v0, high));
    const __m256 wo1 = _mm256_castsi256_ps(_mm256_and_si256(v1, high));
#pragma GCC unroll 6
    for (int c = 0; c < C; ++c) {
      const __m256 b = _mm256_broadcast_ss(x + c * xs + 2 * kp + 1);
      acc[0][c] = _mm256_fmadd_ps(wo0, b, acc[0][c]);
      acc[1][c] = _mm256_fmadd_ps(wo1, b, acc[1][c]);
    }
  }
#pragma GCC unroll 6
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) store(acc[j][c], y + c * ys + 8 * j, rows - 8 * j, add_residual);
}

// A tile of c tokens over np <= panels_for(c) consecutive panels
void run_tile(int c, int np, const uint32_t* w, const float* x, int64_t xs, int64_t kp_n, uint16_t* y, int64_t ys,
              int64_t rows, bool add_residual, bool stream) {
  switch (c) {
    case 1: tile_panels<1, panels_for(1)>(np, w, x, xs, kp_n, y, ys, rows, add_residual, stream); break;
    case 2: tile_panels<2, panels_for(2)>(np, w, x, xs, kp_n, y, ys, rows, add_residual, stream); break;
    case 3: tile_panels<3, panels_for(3)>(np, w, x, xs, kp_n, y, ys, rows, add_residual, stream); break;
#define HALF_CASE(n)                                                                                  \
  case n:                                                                                             \
    for (int h = 0; h < 2 && rows > 16 * h; ++h) /* (a last panel's rows past `out`: not computed) */ \
      half_tile<n>(w + 16 * h, h, x, xs, kp_n, y + 16 * h, ys, rows - 16 * h, add_residual, stream); \
    break;
    HALF_CASE(4) HALF_CASE(5) HALF_CASE(6)
#undef HALF_CASE
  }
}

// A row of the products' inputs as fp32: x's bf16 values, or HF's RMSNorm of them (norm_w not
// null) as the VDPBF16PS path computes it: 8-lane partial sums of squares in input order (a tail
// past the last 8 added in order after the lanes), r = 1 / sqrt(mean + eps) in fp32,
// out = bf16(w bf16(x r))
void prepare_row(const uint16_t* x, const uint16_t* norm_w, int64_t n, float eps, float* out) {
  int64_t i = 0;
  if (norm_w == nullptr) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, from_bf16(load8(x + i)));
    for (; i < n; ++i) out[i] = bf16_to_float(x[i]);
    return;
  }
  __m256 sq = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 v = from_bf16(load8(x + i));
    sq = _mm256_fmadd_ps(v, v, sq);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sq);
  float sum = 0.0f;
  for (float l : lanes) sum += l;
  for (int64_t t = i; t < n; ++t) sum = std::fma(bf16_to_float(x[t]), bf16_to_float(x[t]), sum);
  const float r = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  const __m256 rv = _mm256_set1_ps(r);
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 normed = from_bf16(to_bf16(_mm256_mul_ps(from_bf16(load8(x + i)), rv)));
    _mm256_storeu_ps(out + i, from_bf16(to_bf16(_mm256_mul_ps(from_bf16(load8(norm_w + i)), normed))));
  }
  for (; i < n; ++i)
    out[i] = bf16_to_float(float_to_bf16(bf16_to_float(norm_w[i]) * bf16_to_float(float_to_bf16(bf16_to_float(x[i]) * r))));
}

}  // namespace
#endif

#ifdef GROVE_LINEAR_PATH  // one driver for both paths: threads, panel groups, token tiles

// 1: VDPBF16PS, 2: AVX2 + FMA
extern "C" int grove_linear_supported() { return GROVE_LINEAR_PATH; }

// Tokens a tile takes in one pass over a panel group: a step's cost jumps just past each multiple
extern "C" int grove_linear_tile_tokens() { return MAX_C; }

// x: [T, in] bf16 (row stride xs elements, even); packed: [ceil(out / 32)][in / 2][32][2] bf16;
// y: [T, out] bf16 (row stride ys). add_residual: y holds the residual and receives residual + x W^T.
// norm_w: null, or an RMSNorm weight [in] applied to x's rows first (y = rms_norm(x) W^T, one call
// where torch runs eight ops). Returns 0, or 1 for an odd in / xs.
extern "C" int grove_linear_bf16(const uint16_t* x, int64_t T, int64_t in, int64_t xs, const uint16_t* packed,
                                 int64_t out, uint16_t* y, int64_t ys, int add_residual, const uint16_t* norm_w,
                                 float eps, int num_threads) {
  if (in % 2 || xs % 2) return 1;
  const int64_t kp_n = in / 2, panels = (out + PANEL - 1) / PANEL;
  const uint32_t* w32 = reinterpret_cast<const uint32_t*>(packed);
  // the products' input rows: x itself (VDPBF16PS), or prepare_row's (x normalized, or as fp32 for
  // the AVX2 path) in the caller's thread's scratch, shared with its team
  const bool copy = COPY_INPUTS || norm_w != nullptr;
  thread_local std::vector<XElem> rows_scratch;
  if (copy) rows_scratch.resize(static_cast<size_t>(T * in));
  XElem* const scratch = rows_scratch.data();  // inside the team `rows_scratch` names each thread's own
  const XElem* const xin = copy ? scratch : in_place(x);
  const int64_t xin_s = copy ? in : xs;
  const int64_t tile_c = MAX_C;
#pragma omp parallel num_threads(num_threads)
  {
    if (copy) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) prepare_row(x + t * xs, norm_w, in, eps, scratch + t * in);
    }
    // each thread a contiguous range of panels, in groups of MAX_P: a group's panels stay in L2
    // while every token tile passes over them (weights are read from memory once per step)
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t p_end = panels * (tid + 1) / nt;
    for (int64_t g = panels * tid / nt; g < p_end; g += MAX_P) {
      const int64_t g_end = g + MAX_P < p_end ? g + MAX_P : p_end;
      for (int64_t t0 = 0; t0 < T; t0 += tile_c) {
        const int c = static_cast<int>(T - t0 < tile_c ? T - t0 : tile_c);
        // a single tile streams the weights from memory, which hides the latency anyway (and one
        // stream per thread measured faster at 1 token); a tail tile re-reads them from L2
        const int step = T > MAX_C ? panels_for(c) : 1;
        for (int64_t p = g; p < g_end; p += step) {
          const int np = static_cast<int>(g_end - p < step ? g_end - p : step);
          run_tile(c, np, w32 + p * kp_n * PANEL, xin + t0 * xin_s, xin_s, kp_n, y + t0 * ys + p * PANEL, ys,
                   out - p * PANEL, add_residual != 0, t0 == 0);
        }
      }
    }
  }
  return 0;
}

#else  // neither: the engine keeps torch's products

extern "C" int grove_linear_supported() { return 0; }
extern "C" int grove_linear_tile_tokens() { return 0; }
extern "C" int grove_linear_bf16(const uint16_t*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, uint16_t*,
                                 int64_t, int, const uint16_t*, float, int) {
  return 2;
}

#endif

// ---------------------------------------------------------------------------------------------
// AMX path
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#include "cpu_amx.h"

namespace {

constexpr int AMX_ROWS = 16;    // tokens per A tile (and per C tile)
constexpr int AMX_K = 32;       // inputs per A tile row (64 bytes of bf16): 16 pairs, one B tile's rows
// input chunks ahead (4 x 2 KiB of the panel), prefetched into L1. SmolLM2's products, 30 distinct
// layers: into L2 (T1) 16 ms at 1 token, 52-59 at 128; into L1 12-15 and 26-45 (the machine's noise)
constexpr int AMX_PREFETCH = 4;
// the A tiles' rows (one line per token, at the row stride) come from L2 without it: SmolLM2's
// products at 128 tokens 72 -> 64 ms, at 16 16.4 -> 15.2 (the two libraries alternating in one
// process; 1 chunk ahead alike, 4 less)
constexpr int AMX_X_PREFETCH = 2;

using grove_amx::load_tile_config;  // tiles 0-3: C (token tile m, output half h) at 2 m + h; 4, 5: A
                                   // (token tiles 0, 1); 6, 7: B (the panel's halves)
using grove_amx::permitted;

// MT (1 or 2) token tiles x one panel (32 rows): c[MT * 16][32] fp32 receives the sums.
// w: the panel ([kp_n][32][2] bf16); x: the tile's first token (row stride xs elements, 16 * MT
// readable rows).
template <int MT>
void amx_panel(const uint16_t* __restrict w, int64_t kp_n, const uint16_t* __restrict x, int64_t xs, float* c) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (MT == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t chunks = kp_n * 2 / AMX_K;
  for (int64_t kc = 0; kc < chunks; ++kc) {
    const uint16_t* wk = w + kc * (AMX_K / 2) * PANEL * 2;  // 16 pairs x 32 rows x 2
    const char* ahead = reinterpret_cast<const char*>(wk + AMX_PREFETCH * (AMX_K / 2) * PANEL * 2);
    for (int line = 0; line < 2048; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    _tile_loadd(6, wk, PANEL * 4);       // rows: input pairs; columns: the panel's rows 0-15 x 2
    _tile_loadd(7, wk + 32, PANEL * 4);  // rows 16-31
    if (kc + AMX_X_PREFETCH < chunks) {  // the token rows' inputs a few chunks ahead, into L1 as the panel's
      const uint16_t* xk = x + (kc + AMX_X_PREFETCH) * AMX_K;
      for (int r = 0; r < MT * AMX_ROWS; ++r) _mm_prefetch(reinterpret_cast<const char*>(xk + r * xs), _MM_HINT_T0);
    }
    _tile_loadd(4, x + kc * AMX_K, xs * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT == 2) {
      _tile_loadd(5, x + AMX_ROWS * xs + kc * AMX_K, xs * 2);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, PANEL * 4);
  _tile_stored(1, c + 16, PANEL * 4);
  if constexpr (MT == 2) {
    _tile_stored(2, c + AMX_ROWS * PANEL, PANEL * 4);
    _tile_stored(3, c + AMX_ROWS * PANEL + 16, PANEL * 4);
  }
}

}  // namespace

extern "C" int grove_linear_amx_supported() { return permitted() ? 1 : 0; }

// As grove_linear_bf16 (same packed weights), on AMX tiles; in must be a multiple of 32.
// Returns 0, 1 for an `in` that is not, 2 when the kernel holds no AMX permission.
extern "C" int grove_linear_amx(const uint16_t* x, int64_t T, int64_t in, int64_t xs, const uint16_t* packed,
                                int64_t out, uint16_t* y, int64_t ys, int add_residual, const uint16_t* norm_w,
                                float eps, int num_threads) {
  if (in % AMX_K) return 1;
  if (!permitted()) return 2;
  const int64_t kp_n = in / 2, panels = (out + PANEL - 1) / PANEL;
  const int64_t T16 = (T + AMX_ROWS - 1) / AMX_ROWS * AMX_ROWS;
  // tiles read 16 rows: a step's tail (and normalized rows) come from a scratch of T16 rows whose
  // rows past T are zero, so no tile reads past the caller's x (the caller's thread's scratch)
  thread_local std::vector<uint16_t> padded;
  const bool copy = norm_w != nullptr || T % AMX_ROWS != 0;
  if (copy) {
    padded.resize(static_cast<size_t>(T16 * in));
    std::memset(padded.data() + T * in, 0, static_cast<size_t>((T16 - T) * in) * 2);
  }
  uint16_t* const scratch = padded.data();
  const uint16_t* const xa = copy ? scratch : x;
  const int64_t xas = copy ? in : xs;
#pragma omp parallel num_threads(num_threads)
  {
    if (copy) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) {
        if (norm_w != nullptr) rms_norm_row(x + t * xs, norm_w, in, eps, scratch + t * in);
        else std::memcpy(scratch + t * in, x + t * xs, static_cast<size_t>(in) * 2);
      }
    }
    load_tile_config();
    alignas(64) float c[2 * AMX_ROWS * PANEL];
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t p_end = panels * (tid + 1) / nt;
    // a group of panels stays in L2 while every token tile passes over it
    for (int64_t g = panels * tid / nt; g < p_end; g += MAX_P) {
      const int64_t g_end = g + MAX_P < p_end ? g + MAX_P : p_end;
      for (int64_t t0 = 0; t0 < T16; t0 += 2 * AMX_ROWS) {
        const bool two = T16 - t0 > AMX_ROWS;
        const int64_t tokens = (T - t0 < 2 * AMX_ROWS ? T - t0 : 2 * AMX_ROWS);
        for (int64_t p = g; p < g_end; ++p) {
          const uint16_t* wp = packed + p * kp_n * PANEL * 2;
          if (two) amx_panel<2>(wp, kp_n, xa + t0 * xas, xas, c);
          else amx_panel<1>(wp, kp_n, xa + t0 * xas, xas, c);
          const int64_t rows = out - p * PANEL;
          for (int64_t t = 0; t < tokens; ++t) {
            uint16_t* yt = y + (t0 + t) * ys + p * PANEL;
            store(_mm512_load_ps(c + t * PANEL), yt, static_cast<int>(rows < 16 ? rows : 16), add_residual != 0);
            store(_mm512_load_ps(c + t * PANEL + 16), yt + 16, static_cast<int>(rows < 32 ? rows - 16 : 16),
                  add_residual != 0);
          }
        }
      }
    }
    _tile_release();
  }
  return 0;
}

#define GROVE_AMX_PATH 1
#endif  // AMX

#ifndef GROVE_AMX_PATH  // no AMX: the VDPBF16PS path takes every weight
extern "C" int grove_linear_amx_supported() { return 0; }
extern "C" int grove_linear_amx(const uint16_t*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, uint16_t*,
                                int64_t, int, const uint16_t*, float, int) {
  return 2;
}
#endif
