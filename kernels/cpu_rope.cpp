// Rotary embedding of a step's q and k heads and the step's K/V written into the paged cache, in
// one pass over the step's qkv projection (bf16 or fp32, on the CPU).
//
//   q, k (in place):  x = bf16( bf16(x * cos) + bf16(roll(x, D/2) * signed_sin) )   (fp32: no bf16())
//   k_cache[block[t], offset[t], h] = k[t, h];  v_cache[...] = v[t, h]
//
// signed_sin is sin with its first half negated, so roll(x, D/2) * signed_sin is HF's
// rotate_half(x) * sin element for element (a negated product rounds to the negated rounding).
// Every product of two bf16 values is exact in fp32; each op is then rounded to bf16 to nearest
// even as torch rounds its bf16 mul_ and add_ (a NaN comes out as NaN, its bits aside): the same bits as
// engine.rope.apply_rotary_ followed by the backend's index_put_ writes, which are the reference
// (kernels/cpu_rope.py). Each element is its own arithmetic, so a row's bits never depend on the
// rest of the step.
//
// In fp32 the products and the sum are torch's fp32 mul_, mul_ and add_, each rounded once: the
// fp32 rotation is built without contracting them into an FMA (rotate_head's attribute), so its
// bits are the reference's too.
//
// Why: the torch path runs ~8 ops a layer (roll, 2 mul_, add_, split, 2 index_put_) over tensors
// of a few KiB, ~0.1 ms a layer at 16-48 tokens: 2-4 ms of a 40-80 ms decode step (bf16 on Zen 4;
// ~5 ms of a 51 ms fp32 decode step of one token on a Zen 1).
#include <cstdint>
#include <cstring>

#include "cpu_bf16.h"

namespace {

constexpr int64_t MAX_HEAD_DIM = 512;

using grove_bf16::bf16_to_float;  // (the rounding back is this kernel's own: NaN as 0xFFFF)

inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFF;  // NaN, as torch's vectorized rounding writes it
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// One head of D (even) values in place: x[j] for j < D/2 pairs with x[j + D/2], and back.
inline void rotate_head(uint16_t* x, const uint16_t* cos, const uint16_t* ssin, int64_t D, uint16_t* tmp) {
  const int64_t half = D / 2;
  for (int64_t j = 0; j < half; ++j) {
    const float a = bf16_to_float(to_bf16(bf16_to_float(x[j]) * bf16_to_float(cos[j])));
    const float b = bf16_to_float(to_bf16(bf16_to_float(x[j + half]) * bf16_to_float(ssin[j])));
    tmp[j] = to_bf16(a + b);
  }
  for (int64_t j = half; j < D; ++j) {
    const float a = bf16_to_float(to_bf16(bf16_to_float(x[j]) * bf16_to_float(cos[j])));
    const float b = bf16_to_float(to_bf16(bf16_to_float(x[j - half]) * bf16_to_float(ssin[j])));
    tmp[j] = to_bf16(a + b);
  }
  std::memcpy(x, tmp, static_cast<size_t>(D) * 2);
}

// The same in fp32: each product and the sum rounded once, as torch's ops (never an FMA)
__attribute__((optimize("fp-contract=off")))
void rotate_head(float* x, const float* cos, const float* ssin, int64_t D, float* tmp) {
  const int64_t half = D / 2;
  for (int64_t j = 0; j < half; ++j) tmp[j] = x[j] * cos[j] + x[j + half] * ssin[j];
  for (int64_t j = half; j < D; ++j) tmp[j] = x[j] * cos[j] + x[j - half] * ssin[j];
  std::memcpy(x, tmp, static_cast<size_t>(D) * sizeof(float));
}

template <typename E>
int rope_write_kv(E* qkv, int64_t T, int64_t qkv_stride, int64_t H, int64_t KVH, int64_t D, const E* cos,
                  const E* ssin, E* k_cache, E* v_cache, int64_t block_stride, int64_t slot_stride,
                  int64_t head_stride, const int64_t* write_block, const int64_t* write_offset, int num_threads) {
  if (D % 2 || D > MAX_HEAD_DIM) return 1;
#pragma omp parallel for schedule(static) num_threads(T > 4 ? num_threads : 1)
  for (int64_t t = 0; t < T; ++t) {
    E tmp[MAX_HEAD_DIM];
    E* row = qkv + t * qkv_stride;
    const E* c = cos + t * D;
    const E* s = ssin + t * D;
    for (int64_t h = 0; h < H + KVH; ++h) rotate_head(row + h * D, c, s, D, tmp);
    const int64_t slot = write_block[t] * block_stride + write_offset[t] * slot_stride;
    for (int64_t h = 0; h < KVH; ++h) {
      std::memcpy(k_cache + slot + h * head_stride, row + (H + h) * D, static_cast<size_t>(D) * sizeof(E));
      std::memcpy(v_cache + slot + h * head_stride, row + (H + KVH + h) * D, static_cast<size_t>(D) * sizeof(E));
    }
  }
  return 0;
}

}  // namespace

// qkv: [T, H + 2 KVH, D] bf16, token row stride qkv_stride elements (heads contiguous); cos, ssin:
// [T, D] bf16 contiguous; k_cache, v_cache: one layer's views of the pool, element strides
// block_stride, slot_stride, head_stride (head_dim contiguous); write_block, write_offset: [T].
// Returns 0, or 1 for an odd D or one past MAX_HEAD_DIM.
extern "C" int grove_rope_write_kv(uint16_t* qkv, int64_t T, int64_t qkv_stride, int64_t H, int64_t KVH,
                                   int64_t D, const uint16_t* cos, const uint16_t* ssin, uint16_t* k_cache,
                                   uint16_t* v_cache, int64_t block_stride, int64_t slot_stride, int64_t head_stride,
                                   const int64_t* write_block, const int64_t* write_offset, int num_threads) {
  return rope_write_kv(qkv, T, qkv_stride, H, KVH, D, cos, ssin, k_cache, v_cache, block_stride, slot_stride,
                       head_stride, write_block, write_offset, num_threads);
}

// The same over fp32 tensors
extern "C" int grove_rope_write_kv_f32(float* qkv, int64_t T, int64_t qkv_stride, int64_t H, int64_t KVH, int64_t D,
                                       const float* cos, const float* ssin, float* k_cache, float* v_cache,
                                       int64_t block_stride, int64_t slot_stride, int64_t head_stride,
                                       const int64_t* write_block, const int64_t* write_offset, int num_threads) {
  return rope_write_kv(qkv, T, qkv_stride, H, KVH, D, cos, ssin, k_cache, v_cache, block_stride, slot_stride,
                       head_stride, write_block, write_offset, num_threads);
}
