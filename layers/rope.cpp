#include "layers/rope.h"

#include <cmath>
#include <vector>

#include "autograd/functions.h"

namespace seqtrain {

Tensor apply_rope(const Tensor& x, int64_t offset, double theta) {
  ST_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "rope: x must be [B, T, H, d] with even d, got ", x.desc());
  const int64_t T = x.size(1), d = x.size(3), half = d / 2;
  // cos/sin tables [T, 1, d], computed in double on the host (T * d values per call).
  std::vector<double> cos_v(size_t(T * d)), sin_v(size_t(T * d));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < d; ++i) {
      double freq = std::pow(theta, -2.0 * double(i % half) / double(d));
      double angle = double(offset + t) * freq;
      cos_v[size_t(t * d + i)] = std::cos(angle);
      sin_v[size_t(t * d + i)] = std::sin(angle);
    }
  Tensor cos_t = Tensor::from_vector(cos_v, {T, 1, d}, x.dtype(), x.device());
  Tensor sin_t = Tensor::from_vector(sin_v, {T, 1, d}, x.dtype(), x.device());
  std::vector<Tensor> halves = split(x, {half, half}, 3);
  Tensor rotated = concat({neg(halves[1]), halves[0]}, 3);
  return add(mul(x, cos_t), mul(rotated, sin_t));
}

}  // namespace seqtrain
