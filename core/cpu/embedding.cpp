// Embedding lookup and its gradient. Memory bound: N * D elements read and written.
#include <cstring>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {
namespace {

// ids as int64, each checked against [0, vocab) before any parallel loop touches memory (an
// exception must not escape an OpenMP region).
std::vector<int64_t> checked_ids(const Tensor& ids, int64_t vocab, const char* op) {
  std::vector<int64_t> v = to_indices(ids, op);
  for (size_t i = 0; i < v.size(); ++i)
    ST_CHECK(v[i] >= 0 && v[i] < vocab, op, ": ids[", i, "] = ", v[i], " is outside [0, ", vocab,
             ") of the embedding table");
  return v;
}

}  // namespace

// out[n, :] = table[ids[n], :]; ids [N], table [V, D], out [N, D].
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t vocab = table.size(0), d = table.size(1);
  const std::vector<int64_t> id = checked_ids(ids, vocab, "embedding");
  const int64_t n = int64_t(id.size());
  const size_t row_bytes = size_t(d) * dtype_size(table.dtype());
  const char* src = static_cast<const char*>(table.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
#pragma omp parallel for schedule(static) if (n * d >= kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(dst + size_t(i) * row_bytes, src + size_t(id[size_t(i)]) * row_bytes, row_bytes);
}

// dtable[v, :] = sum of dout[n, :] over n with ids[n] == v, summed in increasing n, in double.
// The positions are bucketed by id first (a stable counting sort), so each table row is owned by
// one task and the sum order does not depend on the thread count.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  const int64_t vocab = dtable.size(0), d = dtable.size(1);
  const std::vector<int64_t> id = checked_ids(ids, vocab, "embedding_backward");
  // first[v] .. first[v + 1] index `order`, which lists the n with ids[n] == v in increasing n.
  std::vector<int64_t> first(size_t(vocab) + 1, 0), order(id.size());
  for (int64_t v : id) ++first[size_t(v) + 1];
  for (int64_t v = 0; v < vocab; ++v) first[size_t(v) + 1] += first[size_t(v)];
  std::vector<int64_t> cursor(first.begin(), first.end() - 1);
  for (size_t i = 0; i < id.size(); ++i) order[size_t(cursor[size_t(id[i])]++)] = int64_t(i);

  dispatch_floating(dtable.dtype(), "embedding_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = dout.data<T>();  // (N, D)
    T* out = dtable.data<T>();    // (V, D)
#pragma omp parallel
    {
      std::vector<double> acc(static_cast<size_t>(d));
#pragma omp for schedule(static)
      for (int64_t v = 0; v < vocab; ++v) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t p = first[size_t(v)]; p < first[size_t(v) + 1]; ++p) {
          const T* row = g + order[size_t(p)] * d;
          for (int64_t j = 0; j < d; ++j) acc[size_t(j)] += convert<double>(row[j]);
        }
        T* dst = out + v * d;
        for (int64_t j = 0; j < d; ++j) dst[j] = convert<T>(acc[size_t(j)]);
      }
    }
  });
}

}  // namespace seqtrain::cpu
