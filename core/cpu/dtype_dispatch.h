// Private helpers of the CPU backend: dtype dispatch, element conversion, and a strided walk over
// up to 8 dims for the kernels that accept arbitrary views (copy, binary).
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

namespace seqtrain::cpu {

// Loops over fewer elements than this run on one thread: below it, waking the OpenMP team costs
// more than the work.
constexpr int64_t kParallelGrain = 1 << 15;

// The type an element is computed in: f32 and bf16 in float (bf16 rounded once on store, as on
// the GPU), f64 in double.
template <typename T>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};
template <typename T>
using compute_t = typename ComputeOf<T>::type;

// Storage type -> any arithmetic type, and back. bf16 goes through float both ways, so every
// conversion to bf16 is one round-to-nearest-even of an f32 value.
template <typename To, typename From>
inline To convert(From v) {
  if constexpr (std::is_same_v<From, bf16> && std::is_same_v<To, bf16>) {
    return v;
  } else if constexpr (std::is_same_v<From, bf16>) {
    return static_cast<To>(bf16_to_float(v));
  } else if constexpr (std::is_same_v<To, bf16>) {
    return float_to_bf16(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the storage type of a floating dtype.
template <typename F>
void dispatch_floating(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::F32: f(TypeTag<float>{}); return;
    case DType::BF16: f(TypeTag<bf16>{}); return;
    case DType::F64: f(TypeTag<double>{}); return;
    default:
      ST_THROW(what, ": expected a floating dtype (f32, bf16, f64), got ", dtype_name(dtype));
  }
}

// Calls f(TypeTag<T>{}) for any dtype.
template <typename F>
void dispatch_any(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: f(TypeTag<float>{}); return;
    case DType::BF16: f(TypeTag<bf16>{}); return;
    case DType::F64: f(TypeTag<double>{}); return;
    case DType::I32: f(TypeTag<int32_t>{}); return;
    case DType::I64: f(TypeTag<int64_t>{}); return;
  }
}

// Calls f(TypeTag<T>{}) with T the storage type of an index dtype (token ids, targets).
template <typename F>
void dispatch_index(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::I32: f(TypeTag<int32_t>{}); return;
    case DType::I64: f(TypeTag<int64_t>{}); return;
    default: ST_THROW(what, ": expected i32 or i64 indices, got ", dtype_name(dtype));
  }
}

// Small per-channel operands (norm weights, conv taps, per-row statistics) are read once into
// doubles, so the kernels that use them dispatch on their main input's dtype only.
inline std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> out(size_t(t.numel()));
  dispatch_any(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = t.data<T>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = convert<double>(p[i]);
  });
  return out;
}

// Writes values (one per element of contiguous t) converted to t's dtype.
inline void store_doubles(const std::vector<double>& values, Tensor& t) {
  dispatch_any(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = t.data<T>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = convert<T>(values[i]);
  });
}

// A contiguous index tensor (i32 or i64) as int64 values.
inline std::vector<int64_t> to_indices(const Tensor& t, const char* what) {
  std::vector<int64_t> out(size_t(t.numel()));
  dispatch_index(t.dtype(), what, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = t.data<T>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = int64_t(p[i]);
  });
  return out;
}

// A shape walked by N operands with their own element strides, after dropping size-1 dims and
// merging dims that are contiguous in every operand, so a dense or simply-broadcast operand set
// becomes one long row.
template <size_t N>
struct StridedWalk {
  int ndim = 0;
  std::array<int64_t, 8> shape{};
  std::array<std::array<int64_t, 8>, N> strides{};

  StridedWalk(const Shape& full_shape, const std::array<const Tensor*, N>& operands) {
    ST_CHECK(full_shape.size() <= 8, "strided kernels support at most 8 dims, got ",
             shape_str(full_shape));
    for (size_t d = 0; d < full_shape.size(); ++d) {
      if (full_shape[d] == 1) continue;
      bool merge = ndim > 0;
      for (size_t k = 0; k < N && merge; ++k)
        merge = strides[k][ndim - 1] == operands[k]->stride(int64_t(d)) * full_shape[d];
      if (merge) {
        shape[ndim - 1] *= full_shape[d];
        for (size_t k = 0; k < N; ++k) strides[k][ndim - 1] = operands[k]->stride(int64_t(d));
      } else {
        shape[ndim] = full_shape[d];
        for (size_t k = 0; k < N; ++k) strides[k][ndim] = operands[k]->stride(int64_t(d));
        ++ndim;
      }
    }
    if (ndim == 0) {  // a single element (0-d, or all dims of size 1)
      ndim = 1;
      shape[0] = 1;
      for (size_t k = 0; k < N; ++k) strides[k][0] = 1;
    }
  }

  int64_t row_len() const { return shape[ndim - 1]; }
  int64_t rows() const {
    int64_t r = 1;
    for (int d = 0; d < ndim - 1; ++d) r *= shape[d];
    return r;
  }

  // Calls row(base, len, step) for every innermost row, split into pieces of at most kPiece
  // elements so that one long row also spreads over the threads: element j of the piece of
  // operand k is at base[k] + j * step[k]. Elements are independent, so the result does not
  // depend on the thread count.
  template <typename RowFn>
  void for_each_row(RowFn row) const {
    constexpr int64_t kPiece = 1 << 14;
    const int64_t len = row_len(), nrows = rows();
    const int64_t pieces_per_row = (len + kPiece - 1) / kPiece;
    const int64_t npieces = nrows * pieces_per_row;
    std::array<int64_t, N> step;
    for (size_t k = 0; k < N; ++k) step[k] = strides[k][ndim - 1];
#pragma omp parallel for schedule(static) if (npieces > 1 && nrows * len >= kParallelGrain)
    for (int64_t p = 0; p < npieces; ++p) {
      const int64_t r = p / pieces_per_row, start = (p % pieces_per_row) * kPiece;
      std::array<int64_t, N> base{};
      int64_t rest = r;
      for (int d = ndim - 2; d >= 0; --d) {
        const int64_t i = rest % shape[d];
        rest /= shape[d];
        for (size_t k = 0; k < N; ++k) base[k] += i * strides[k][d];
      }
      for (size_t k = 0; k < N; ++k) base[k] += start * step[k];
      row(base, std::min(kPiece, len - start), step);
    }
  }
};

}  // namespace seqtrain::cpu
