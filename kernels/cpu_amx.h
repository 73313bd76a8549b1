// AMX set-up shared by Grove's CPU kernels (cpu_linear.cpp, cpu_attention.cpp): the process's
// permission to use the tile registers and the one tile configuration both kernels use. Included
// where __AMX_TILE__ holds. (cpu_build.py keys each built library by this header too.)
#pragma once
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace grove_amx {

// Linux hands AMX's tile state to a process only on request (arch_prctl, once per process)
inline bool permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// All eight tiles 16 rows x 64 bytes. Loaded in every thread at every call: the tile
// configuration is per thread, and torch's oneDNN kernels load their own in the same threads.
inline void load_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

}  // namespace grove_amx
