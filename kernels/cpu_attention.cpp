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
//
// Decode reads every key and value of the batch once per layer, so it is bound by memory: values
// are read from the pool in place and converted on load (no fp32 copy of them), keys and values
// are prefetched two tiles ahead (blocks are scattered, so the hardware prefetchers restart at
// each one), a decode step's group of rows reads the values in one pass, and each thread keeps its
// scratch across calls. bf16, 2 threads, one layer, 30 layers' pools cycled: 16 sequences behind
// 1,500 tokens 2.39 -> 1.07 ms, 16 trees of 9 behind 500 1.45 -> 1.01 ms (same bits).
//
// With AVX512-BF16 and a bf16 q and cache (bf16 serving), scores take VDPBF16PS on raw dim pairs
// (score_tiles_bf16: no conversion, half the multiply-adds, four tiles' chains side by side) and
// bf16 values are split into even / odd dims by two bit operations instead of shuffled into order
// (split_bf16; the value sums keep their bits). Measured on an AMD EPYC, 2 threads, same harness
// (session 12): one sequence behind 900 decoding 45 -> 26-30 us a layer, its 14-node tree 146 ->
// 93-102 us; 16 sequences behind 1,500 1.19 -> 0.67-0.68 ms; 16 trees of 9 behind 500 1.05 ->
// 0.61-0.62 ms. Decode then reads ~27 GB/s: the loads of K and V stall (prefetching further
// ahead, into L2, or on huge pages changed nothing).
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__AVX512BF16__)
#include <immintrin.h>
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
inline void transpose16(v16f* m) { stage<8>(m); stage<4>(m); stage<2>(m); stage<1>(m); }

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
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = __builtin_fmaf(n, -0.693359375f, x);
  r = __builtin_fmaf(n, 2.12194440e-4f, r);
  float p = 1.38888889e-3f;
  p = __builtin_fmaf(p, r, 8.33333333e-3f);
  p = __builtin_fmaf(p, r, 4.16666667e-2f);
  p = __builtin_fmaf(p, r, 1.66666667e-1f);
  p = __builtin_fmaf(p, r, 0.5f);
  p = __builtin_fmaf(p, r, 1.0f);
  p = __builtin_fmaf(p, r, 1.0f);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

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
  v16f acc[RB] = {};
  for (int64_t d = 0; d < D; ++d) {
    const v16f k = kt[d];
    for (int r = 0; r < RB; ++r) acc[r] = qs[r * D + d] * k + acc[r];  // contracted: one FMA
  }
  for (int r = 0; r < RB; ++r) store16(s + r * width, acc[r] * scale);
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

// Cache lines ahead of the key being read: a tile's keys sit in one block and blocks are scattered
// in the pool, so the hardware prefetchers start over at every block. No arithmetic depends on it.
constexpr int64_t AHEAD = 2 * TILE;

template <typename T>
inline void prefetch_row(const T* p, int64_t D) {
  for (int64_t d = 0; d < D; d += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(p + d);
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
                       float* out, float* den) {
  constexpr bool split = std::is_same_v<T, uint16_t> && DV % 2 == 0;
  v16f acc[RB][DV] = {};
  float sum[RB] = {};
  for (int64_t j = j0; j < L; ++j) {
    if (j + AHEAD < L) prefetch_row(vc + offset[j + AHEAD], DV * TILE);
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
      sum[r] += w;
    }
  }
  for (int r = 0; r < RB; ++r) {
    float* o = out + r * DV * TILE;
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
    den[r] = sum[r];
  }
}

// All R rows, four per pass over the values and the rest in one more (a decode step's group of
// three rows reads the values once). A row's arithmetic is the same in any pass.
template <typename T, int DV>
inline void values(const float* p, int64_t width, const T* vc, const int64_t* offset, int64_t j0, int64_t L,
                   int64_t R, float* out, float* den) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) value_rows<T, 4, DV>(p + r * width, width, vc, offset, j0, L, out + r * DV * TILE, den + r);
  const float* pr = p + r * width;
  float* o = out + r * DV * TILE;
  switch (R - r) {
    case 3: value_rows<T, 3, DV>(pr, width, vc, offset, j0, L, o, den + r); break;
    case 2: value_rows<T, 2, DV>(pr, width, vc, offset, j0, L, o, den + r); break;
    case 1: value_rows<T, 1, DV>(pr, width, vc, offset, j0, L, o, den + r); break;
    default: break;
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
  for (int64_t j = j0; j < j0 + AHEAD && j < L; ++j) prefetch_row(key_at(kc, j), D);
  for (int64_t t = t_first; t < tiles; ++t) {
    for (int64_t j = t * TILE + AHEAD; j < t * TILE + AHEAD + TILE && j < L; ++j) prefetch_row(key_at(kc, j), D);
    float* st = s + t * TILE;
#if defined(__AVX512BF16__)
    if (pairs) {  // 16 keys x 16 pairs blocks, the raw bits transposed in registers
      const int64_t nt = tiles - t < SIDE_TILES ? tiles - t : SIDE_TILES;
      for (int64_t n = 0; n < nt; ++n) {
        if (n > 0)
          for (int64_t j = (t + n) * TILE + AHEAD; j < (t + n) * TILE + AHEAD + TILE && j < L; ++j)
            prefetch_row(key_at(kc, j), D);
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
      for (int64_t d0 = 0; d0 < D; d0 += TILE) {
        v16f m[TILE];
        for (int jj = 0; jj < TILE; ++jj) {
          const int64_t j = t * TILE + jj;
          m[jj] = j < L ? load16(key_at(kc, j) + d0) : v16f{};
        }
        transpose16(m);
        for (int c = 0; c < TILE; ++c) kt[d0 + c] = m[c];
      }
    } else {
      for (int jj = 0; jj < TILE; ++jj) {
        const int64_t j = t * TILE + jj;
        const T* kp = j < L ? key_at(kc, j) : nullptr;
        for (int64_t d = 0; d < D; ++d) kt[d][jj] = kp ? load(kp, d) : 0.0f;
      }
    }
    int64_t r = 0;
    for (; r + 8 <= R; r += 8) score_rows<8>(qs + r * D, kt, D, a.scale, st + r * width, width);
    for (; r + 4 <= R; r += 4) score_rows<4>(qs + r * D, kt, D, a.scale, st + r * width, width);
    for (; r < R; ++r) score_rows<1>(qs + r * D, kt, D, a.scale, st + r * width, width);
  }

  // softmax weights: cached keys from the row's window start (0 without a window) are visible;
  // the step's own tokens by the tree mask (or causally) and the window; keys past L never.
  // Tiles wholly inside [window start, cached) take the vector path.
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
    const int64_t open_hi = cached / TILE;  // tiles [open_lo, open_hi) are wholly visible
    int64_t open_lo = lo <= 0 ? 0 : (lo + TILE - 1) / TILE;
    if (open_lo > open_hi) open_lo = open_hi;  // none: every key goes through visible()
    v16f mv;
    for (int jj = 0; jj < TILE; ++jj) mv[jj] = -__builtin_inff();
    for (int64_t t = open_lo; t < open_hi; ++t) {
      const v16f x = load16(sr + t * TILE);
      mv = x > mv ? x : mv;
    }
    float m = -__builtin_inff();
    for (int jj = 0; jj < TILE; ++jj) m = mv[jj] > m ? mv[jj] : m;
    for (int64_t j = j0; j < open_lo * TILE; ++j)
      if (visible(j) && sr[j] > m) m = sr[j];
    for (int64_t j = open_hi * TILE; j < L; ++j)
      if (visible(j) && sr[j] > m) m = sr[j];
    for (int64_t t = t_first; t < tiles; ++t) {
      float e[TILE];
      for (int jj = 0; jj < TILE; ++jj) e[jj] = exp_neg(sr[t * TILE + jj] - m);
      if (t >= open_lo && t < open_hi) {
        for (int jj = 0; jj < TILE; ++jj) sr[t * TILE + jj] = e[jj];
      } else {
        for (int jj = 0; jj < TILE; ++jj) sr[t * TILE + jj] = visible(t * TILE + jj) ? e[jj] : 0.0f;
      }
    }
  }

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

template <typename T, typename TQ>
void attend_all(const Args& a, int64_t num_seqs, int num_threads) {
  // work items: (sequence, kv head, chunk of CHUNK_TOKENS query tokens), handed out dynamically
  std::vector<int64_t> items;  // seq << 32 | head << 16 | chunk
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t n = a.query_start[b + 1] - a.query_start[b];
    for (int64_t c = 0; c * CHUNK_TOKENS < n; ++c)
      for (int64_t h = 0; h < a.kvh; ++h) items.push_back(b << 32 | h << 16 | c);
  }
  const int64_t count = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(num_threads)
  {
    static thread_local Scratch w;  // kept across calls: no allocation (and page faults) per layer
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) {
      const int64_t it = items[i];
      attend_item<T, TQ>(a, it >> 32, (it >> 16) & 0xffff, it & 0xffff, w);
    }
  }
}

}  // namespace

// 1 when bf16 q against a bf16 cache is scored by VDPBF16PS (score_rows_bf16), else 0.
extern "C" int grove_attention_bf16_dot() { return BF16_DOT ? 1 : 0; }

// kv_dtype: 0 fp32, 1 bf16, 2 fp16; q_f32: q and out are fp32 (else the cache's dtype). 0 = done.
extern "C" int grove_paged_attention(
    const void* q, const void* k, const void* v, int32_t kv_dtype, int32_t q_f32, int64_t block_stride,
    int64_t block_size, int64_t kvh, int64_t group, int64_t head_dim, const int64_t* block_tables,
    int64_t max_blocks, const int64_t* query_start, const int64_t* num_cached, int64_t num_seqs,
    const uint8_t* tree_mask, int64_t mask_stride, const int64_t* positions, int64_t window, float scale, void* out,
    int32_t num_threads) {
  const Args a{q, k, v, block_stride, block_size, kvh, group, head_dim, block_tables, max_blocks,
               query_start, num_cached, tree_mask, mask_stride, positions, window, scale, out};
  switch (kv_dtype * 2 + (q_f32 ? 1 : 0)) {
    case 0: case 1: attend_all<float, float>(a, num_seqs, num_threads); return 0;
    case 2: attend_all<uint16_t, uint16_t>(a, num_seqs, num_threads); return 0;
    case 3: attend_all<uint16_t, float>(a, num_seqs, num_threads); return 0;
    case 4: attend_all<_Float16, _Float16>(a, num_seqs, num_threads); return 0;
    case 5: attend_all<_Float16, float>(a, num_seqs, num_threads); return 0;
    default: return 1;
  }
}
