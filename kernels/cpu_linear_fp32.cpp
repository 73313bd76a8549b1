// fp32 products at a few rows on the CPU (AVX2 + FMA, or AVX-512): the weights streamed once, as they lie.
//
//   y[t, o] = sum_i x[t, i] * W[o, i]             (optionally y[t, o] += that: the residual)
//   optionally x = rms_norm(x) * norm_w first      (the norm before a product, fused into it)
//
// Decoding in fp32 reads every weight once per step (SmolLM2: 540 MB) and computes little with
// it. On an AVX2-only AMD EPYC (Zen 1, 2 threads) torch's products at 1 row took 55 ms for it
// (F.linear and W @ X alike, ~10 GB/s), where this kernel takes ~35 (~16 GB/s, what the bf16 kernel
// reaches there). engine.fp32_products times it beside torch's two layouts per row-count bucket
// and takes the fastest, so on a machine where torch streams faster it is simply not taken.
//
// The weight stays [out, in] row-major (no packed copy); each thread copies x, a few KiB, into the
// tiles' order first (pack_x). A tile is R output rows x C tokens: for each N inputs (N = 8 lanes
// with AVX2, 16 with AVX-512: Lanes below) it loads C token vectors and, per row, one weight vector
// that feeds C FMAs into R x C accumulators (lane j of an accumulator sums inputs j, j + N, ...); at
// the end each accumulator is summed across its lanes in a fixed order. An output element's
// arithmetic is the same whatever the row count, the tile or the thread (row-invariant, though fp32
// does not need it).
//
// A fused RMSNorm normalizes the step's rows into the calling thread's scratch first (sum of
// squares in 8 lanes in input order, then across the lanes as below; x * (1 / sqrt(mean + eps))
// * w, as HF's order of operations): one call where torch runs six ops over a few KiB each (~6 ms
// of a 51 ms fp32 decode step on the Zen 1, 61 norms).
//
// Threads: each takes a contiguous range of output rows (a multiple of 24, the tiles' common row
// count), so a weight row is read from memory once per step; past C tokens a group of R rows is
// read again from L1/L2 for each further group of tokens. While a row group runs, the next one's
// weights are prefetched into L2 (rows(), below): the first pass over a group then finds them in
// cache instead of waiting on memory with few tokens' work to hide it.
//
// Session 47, AMD EPYC Zen 4, 2 threads, SmolLM2's products with the lm_head, ms
// (scripts/ab_cpu_linear.py --fp32; the builds alternating in one process):
//   - With AVX-512 the tiles take 16 lanes and up to 24 accumulators (AVX2's tiles without the
//     prefetch -> these): 1 token 19.8 -> 18.4, 4 29.3 -> 17.7, 8 36.5 -> 21.0, 16 50.5 -> 29.3,
//     32 81.4 -> 54.8, 64 140 -> 111; without the prefetch 8-16 tokens took 1.5x as long. Up to 6
//     tokens a step costs what 1 does there (the weights' read from memory).
//   - The AVX2 build (-march=haswell, the same loop over ctypes) on this CPU, before -> with the
//     prefetch: 1 17.1 -> 15.9, 2 24.6 -> 16.6, 8 35.8 -> 19.2, 16 48.9 -> 36.3 (same bits). Not
//     yet timed on an AVX2-only CPU (Zen 1 computes far slower, so there the gain may be smaller):
//     A/B it there when one is lent; engine.fp32_products takes torch's layouts wherever they are
//     faster anyway.
//
// Session 48, the same machine kind: x packed per thread and the fuller tiles' vectors pinned in
// registers (fma_step), and a 3 x 8 tile for 7-8 tokens (one pass over the weights where 6 x 4 took
// two). Same bits. Session 47's build -> this, ms: 1 token 20.8 -> 20.8, 4 17.4 -> 17.4, 8 23.4 ->
// 21.6, 12 29.0 -> 24.5, 16 31.8 -> 26.1, 32 69.2 -> 54.7, 64 130 -> 102 (0.75-0.84x from 12
// tokens). The AVX2 build on this CPU: 0.96-1.03x at 1-8 tokens, 16 38.4 -> 34.3, 32 70.0 -> 60.3,
// 64 134 -> 109; not timed on an AVX2-only CPU either.
#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)

namespace {

inline float hsum(__m256 v) {  // lanes summed in a fixed order: (0+4, 1+5, 2+6, 3+7), then pairs
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

#if defined(__AVX512F__)
inline float hsum(__m512 v) {  // the two 256-bit halves added, then as the 8-lane hsum
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return hsum(_mm256_add_ps(lo, hi));
}
#endif

// A tile's R x C accumulators, each summed across its lanes (hsum), into y[c * ys + r] (or added there)
template <int R, int C, typename V>
inline void store_sums(V (&acc)[R][C], float* __restrict y, int64_t ys, bool add) {
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const float s = hsum(acc[r][c]);
      y[c * ys + r] = add ? y[c * ys + r] + s : s;
    }
}

// The vector the tiles take: 8 fp32 lanes with AVX2, 16 with AVX-512 (which also has 32 registers
// for larger tiles). Lane j of an accumulator sums inputs j, j + N, j + 2N, ... in order; with 16
// lanes an input count of 8 mod 16 ends with load8, whose upper lanes are zeros (they add exact
// zeros). Same arithmetic for every tile shape, so an output's bits do not depend on the tile.
#if defined(__AVX512F__)
struct Lanes {
  using V = __m512;
  static constexpr int64_t N = 16;
  static constexpr int ACC = 24;  // accumulators in the fullest tiles
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load8(const float* p) { return _mm512_maskz_loadu_ps(0x00FF, p); }
  static void store(float* p, V v) { _mm512_store_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static void pin(V& v) { asm("" : "+v"(v)); }  // v stays in a register (fma_step)
};
#else
struct Lanes {
  using V = __m256;
  static constexpr int64_t N = 8;
  static constexpr int ACC = 12;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load8(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static void pin(V& v) { asm("" : "+x"(v)); }
};
#endif

// x laid out for the tiles: pass p (tokens p * C .. p * C + C) as [steps][C][N] floats (a row's
// last vector zero-padded), so a k step's C token vectors lie together behind one pointer. With a
// pointer per token row, a 6 x 4 tile wanted more registers than there are: GCC spilled an
// accumulator (and folded loads into the FMAs: 22-28 loads a k step for 24 FMAs).
inline int64_t pass_floats(int64_t in, int C) { return C * ((in + Lanes::N - 1) / Lanes::N) * Lanes::N; }

// Token t's first vector in the packed x; its next k step's is C * N floats on
inline int64_t packed_at(int64_t t, int64_t in, int C) { return t / C * pass_floats(in, C) + t % C * Lanes::N; }

void pack_x(const float* x, int64_t T, int64_t in, int64_t xs, int C, float* __restrict xp) {
  const int64_t steps = (in + Lanes::N - 1) / Lanes::N, full = in / Lanes::N;
  for (int64_t t = 0; t < T; ++t) {
    float* dst = xp + packed_at(t, in, C);
    const float* src = x + t * xs;
    for (int64_t s = 0; s < full; ++s, dst += C * Lanes::N) Lanes::store(dst, Lanes::load(src + s * Lanes::N));
    if (full < steps) Lanes::store(dst, Lanes::load8(src + full * Lanes::N));  // 8 inputs and 8 zeros
  }
}

// One k step of a tile: inputs k .. k + N (k .. k + 8 with Short) of C tokens (their vectors at x,
// N floats apart) times R rows' weights.
//
// In the fuller tiles GCC, short of registers, folds each load into the FMAs that use it: every
// weight (or token) vector loaded C (or R) times a k step (with x packed: 28 loads for a 6 x 4
// tile's 24 FMAs), and the FMAs wait on the loads. Pinning each loaded vector in a register
// (Lanes::pin) keeps it to R + C loads: SmolLM2's products at 12-64 tokens took 0.75-0.84x the
// time (session 48, Zen 4). The smaller tiles run where a step streams the weights from memory
// once (1, 3 and 4 tokens with AVX-512), and there pinning was 5-10% slower, so they are left to GCC.
template <int R, int C, bool Short>
inline void fma_step(Lanes::V (&acc)[R][C], const float* __restrict w, int64_t in, const float* __restrict x,
                     int64_t k) {
  constexpr bool pin = R * C > Lanes::ACC * 2 / 3;
  Lanes::V xv[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    xv[c] = Lanes::load(x + c * Lanes::N);  // packed: a short row's tail is zeros
    if (pin) Lanes::pin(xv[c]);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    Lanes::V wv = Short ? Lanes::load8(w + r * in + k) : Lanes::load(w + r * in + k);
    if (pin) Lanes::pin(wv);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = Lanes::fma(wv, xv[c], acc[r][c]);
  }
}

// R rows x C tokens, all inputs (in % 8 == 0). x: the tokens' packed vectors (pack_x), a k step's
// xstep floats after the last's; token t's outputs at y + t * ys. pf: pf_lines cache lines of the
// next row group to prefetch into L2, spread over the k steps.
template <int R, int C>
void tile(const float* __restrict w, int64_t in, const float* __restrict x, int64_t xstep, float* __restrict y,
          int64_t ys, bool add, const char* pf, int64_t pf_lines) {
  Lanes::V acc[R][C];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = Lanes::zero();
  const int64_t full = in - in % Lanes::N, steps = (in + Lanes::N - 1) / Lanes::N;
  const int64_t pf_step = pf_lines > 0 ? (pf_lines + steps - 1) / steps : 0;  // lines prefetched a k step
  int64_t pf_done = 0;
  for (int64_t k = 0; k < full; k += Lanes::N, x += xstep) {
    fma_step<R, C, false>(acc, w, in, x, k);
    for (int64_t i = 0; i < pf_step && pf_done < pf_lines; ++i, ++pf_done)
      _mm_prefetch(pf + pf_done * 64, _MM_HINT_T1);
  }
  if (full < in) fma_step<R, C, true>(acc, w, in, x, full);  // 8 inputs left (16 lanes only)
  for (; pf_done < pf_lines; ++pf_done) _mm_prefetch(pf + pf_done * 64, _MM_HINT_T1);
  store_sums(acc, y, ys, add);
}

// A tile of c <= C tokens with R rows (a pass: the last one may have fewer than C)
template <int R, int C>
void tail_tile(int c, const float* w, int64_t in, const float* x, int64_t xstep, float* y, int64_t ys, bool add,
               const char* pf, int64_t pf_lines) {
  if constexpr (C > 1) {
    if (c < C) return tail_tile<R, C - 1>(c, w, in, x, xstep, y, ys, add, pf, pf_lines);
  }
  tile<R, C>(w, in, x, xstep, y, ys, add, pf, pf_lines);
}

// Rows [o0, o1) for every token: R rows at a time (a tail of 1-row tiles), C tokens at a time. The
// next row group's weights are prefetched into L2 while a group runs: by its one pass, or a slice
// by each of its later passes (the first streams the group itself from memory).
template <int R, int C>
void rows(const float* w, int64_t in, int64_t o0, int64_t o1, const float* xp, int64_t T, float* y, int64_t ys,
          bool add) {
  const int64_t passes = (T + C - 1) / C;
  const int64_t group_lines = R * in * static_cast<int64_t>(sizeof(float)) / 64;
  int64_t o = o0;
  for (; o + R <= o1; o += R) {
    const bool prefetch = o + 2 * R <= o1;  // the next group is this thread's too
    const char* next = prefetch ? reinterpret_cast<const char*>(w + (o + R) * in) : nullptr;
    for (int64_t p = 0; p < passes; ++p) {
      const int64_t t = p * C, c = T - t < C ? T - t : C;
      int64_t lo = 0, hi = 0;  // this pass's slice of the next group's lines
      if (prefetch && passes == 1) lo = 0, hi = group_lines;  // one pass: the next group's rows ahead of it
      else if (prefetch && p > 0) lo = group_lines * (p - 1) / (passes - 1), hi = group_lines * p / (passes - 1);
      tail_tile<R, C>(static_cast<int>(c), w + o * in, in, xp + packed_at(t, in, C), C * Lanes::N, y + t * ys + o,
                      ys, add, hi > lo ? next + lo * 64 : nullptr, hi - lo);
    }
  }
  for (; o < o1; ++o)
    for (int64_t t = 0; t < T; ++t)
      tile<1, 1>(w + o * in, in, xp + packed_at(t, in, C), C * Lanes::N, y + t * ys + o, ys, add, nullptr, 0);
}

// The product with R x C tiles: the rows split over the team, each thread packing x (pack_x) into
// its own buffer first (a few KiB to ~100; one packed copy for all would be written by one core and
// read from its cache by the others at every call)
template <int R, int C>
void product(const float* x, int64_t T, int64_t in, int64_t xs, const float* w, int64_t out, float* y, int64_t ys,
             bool add, int num_threads) {
  constexpr int64_t UNIT = 24;  // rows per thread come in multiples of every tile's R
  const int64_t units = (out + UNIT - 1) / UNIT;
#pragma omp parallel num_threads(num_threads)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t o0 = units * tid / nt * UNIT, o1_units = units * (tid + 1) / nt * UNIT;
    const int64_t o1 = o1_units < out ? o1_units : out;
    if (o0 < o1) {
      thread_local std::vector<float> packed;
      packed.resize(static_cast<size_t>((T + C - 1) / C * pass_floats(in, C) + 16));
      // 64-byte aligned: no vector load straddles two cache lines
      float* const xp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(packed.data()) + 63) & ~uintptr_t{63});
      pack_x(x, T, in, xs, C, xp);
      rows<R, C>(w, in, o0, o1, xp, T, y, ys, add);
    }
  }
}

// out = x * (1 / sqrt(mean(x^2) + eps)) * w over one row of n (n % 8 == 0)
void rms_norm_row(const float* x, const float* w, int64_t n, float eps, float* out) {
  __m256 ss = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    ss = _mm256_fmadd_ps(v, v, ss);
  }
  const float inv = 1.0f / std::sqrt(hsum(ss) / static_cast<float>(n) + eps);
  const __m256 iv = _mm256_set1_ps(inv);
  for (int64_t k = 0; k < n; k += 8)
    _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), iv), _mm256_loadu_ps(w + k)));
}

}  // namespace

extern "C" int grove_linear_fp32_supported() { return 1; }

// x: [T, in] fp32 (row stride xs); w: [out, in] fp32 contiguous; y: [T, out] fp32 (row stride ys).
// add_residual: y holds the residual and receives y + x W^T. norm_w: null, or an RMSNorm weight
// [in] applied to x's rows first. Returns 0, or 1 when in is not a multiple of 8.
extern "C" int grove_linear_fp32(const float* x, int64_t T, int64_t in, int64_t xs, const float* w, int64_t out,
                                 float* y, int64_t ys, int add_residual, const float* norm_w, float eps,
                                 int num_threads) {
  if (in % 8) return 1;
  const bool add = add_residual != 0;
  if (norm_w != nullptr) {  // the normalized rows in this thread's scratch (a few KiB: not worth the team)
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(T * in));
    for (int64_t t = 0; t < T; ++t) rms_norm_row(x + t * xs, norm_w, in, eps, scratch.data() + t * in);
    x = scratch.data();
    xs = in;
  }
#if defined(__AVX512F__)
  if (T == 1) product<8, 1>(x, T, in, xs, w, out, y, ys, add, num_threads);        // 8 weight streams in flight
  else if (T == 2) product<12, 2>(x, T, in, xs, w, out, y, ys, add, num_threads);  // 24 accumulators
  else if (T <= 6) product<4, 6>(x, T, in, xs, w, out, y, ys, add, num_threads);   // one pass over the weights
  else if (T <= 8) product<3, 8>(x, T, in, xs, w, out, y, ys, add, num_threads);   // one pass: 24 accumulators
  else product<6, 4>(x, T, in, xs, w, out, y, ys, add, num_threads);               // 24 accumulators, 4 token vectors
#else
  if (T == 1) product<8, 1>(x, T, in, xs, w, out, y, ys, add, num_threads);       // 8 weight streams in flight
  else if (T == 2) product<6, 2>(x, T, in, xs, w, out, y, ys, add, num_threads);  // 12 accumulators
  else product<4, 3>(x, T, in, xs, w, out, y, ys, add, num_threads);              // 12 accumulators, 3 token vectors
#endif
  return 0;
}

#else  // without AVX2 and FMA the engine keeps torch's fp32 products

extern "C" int grove_linear_fp32_supported() { return 0; }
extern "C" int grove_linear_fp32(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*, int64_t, int,
                                 const float*, float, int) {
  return 2;
}

#endif
