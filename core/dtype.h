// Element types. f64 exists for the CPU reference and gradcheck; bf16 is the GPU compute type;
// i32/i64 hold token ids.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace seqtrain {

enum class DType : uint8_t { F32, BF16, F64, I32, I64 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F64: return 8;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
  }
  return "?";
}

inline bool is_floating(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F64; }
inline bool is_integer(DType t) { return t == DType::I32 || t == DType::I64; }

// bf16 storage type shared by host and device code: the upper 16 bits of an IEEE f32.
// Conversion rounds to nearest even (NaN stays NaN), as __float2bfloat16_rn does.
struct bf16 {
  uint16_t bits;
};

#if defined(__CUDACC__)
#define SEQTRAIN_HD __host__ __device__ __forceinline__
#else
#define SEQTRAIN_HD inline
#endif

SEQTRAIN_HD float bf16_to_float(bf16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

SEQTRAIN_HD bf16 float_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

}  // namespace seqtrain
