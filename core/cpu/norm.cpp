// LayerNorm and RMSNorm over the last dim of contiguous x [rows, D], in double, rounded once on
// store. Statistics (mean, rstd [rows]) are stored in the statistics dtype (f32, f64 for f64) and
// the backward uses the stored values, as the GPU does. Memory bound: the forward reads x twice
// and writes y; the backward reads x and dy twice (once for dx, once for the parameter grads).
//   LayerNorm: xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps) (biased var); y = xhat * w + b
//   RMSNorm:   xhat = x * rstd,          rstd = 1 / sqrt(mean(x^2) + eps);      y = xhat * w
#include <cmath>

#include "core/backend.h"
#include "core/cpu/dtype_dispatch.h"

namespace seqtrain::cpu {
namespace {

int64_t rows_of(const Tensor& x, int64_t d) { return d == 0 ? 0 : x.numel() / d; }

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, per row; the mean(g) term
// is dropped for RMSNorm (mean == nullptr), whose xhat does not subtract a mean.
template <typename T>
void input_grad(const T* x, const T* dy, const double* mean, const std::vector<double>& rstd,
                const std::vector<double>& w, int64_t rows, int64_t d, T* dx) {
#pragma omp parallel for schedule(static) if (rows > 1 && rows * d >= kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;  // (D,)
    const T* dyr = dy + r * d;
    T* dxr = dx + r * d;
    const double mu = mean ? mean[r] : 0.0, rs = rstd[size_t(r)];
    double g_sum = 0.0, g_xhat_sum = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double g = convert<double>(dyr[j]) * w[size_t(j)];
      g_sum += g;
      g_xhat_sum += g * (convert<double>(xr[j]) - mu) * rs;
    }
    const double g_mean = mean ? g_sum / double(d) : 0.0, g_xhat_mean = g_xhat_sum / double(d);
    for (int64_t j = 0; j < d; ++j) {
      const double g = convert<double>(dyr[j]) * w[size_t(j)];
      const double xhat = (convert<double>(xr[j]) - mu) * rs;
      dxr[j] = convert<T>(rs * (g - g_mean - xhat * g_xhat_mean));
    }
  }
}

// dweight[j] = sum_r dy[r, j] * xhat[r, j]; dbias[j] = sum_r dy[r, j] when dbias is defined.
// Parallel over blocks of columns, each summing its rows in order: deterministic.
template <typename T>
void param_grads(const T* x, const T* dy, const double* mean, const std::vector<double>& rstd,
                 int64_t rows, int64_t d, Tensor& dweight, Tensor& dbias) {
  constexpr int64_t kBlock = 64;
  std::vector<double> dw(size_t(d), 0.0), db(size_t(d), 0.0);
  const int64_t blocks = (d + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (blocks > 1 && rows * d >= kParallelGrain)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * kBlock, j1 = std::min(d, j0 + kBlock);
    for (int64_t r = 0; r < rows; ++r) {
      const double mu = mean ? mean[r] : 0.0, rs = rstd[size_t(r)];
      for (int64_t j = j0; j < j1; ++j) {
        const double g = convert<double>(dy[r * d + j]);
        dw[size_t(j)] += g * (convert<double>(x[r * d + j]) - mu) * rs;
        db[size_t(j)] += g;
      }
    }
  }
  store_doubles(dw, dweight);
  if (dbias.defined()) store_doubles(db, dbias);
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                       Tensor& y, Tensor& mean, Tensor& rstd) {
  const int64_t d = x.size(-1), rows = rows_of(x, d);
  const std::vector<double> w = to_doubles(weight);
  const std::vector<double> b =
      bias.defined() ? to_doubles(bias) : std::vector<double>(size_t(d), 0.0);
  std::vector<double> mean_v(static_cast<size_t>(rows)), rstd_v(static_cast<size_t>(rows));
  dispatch_floating(x.dtype(), "layernorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * d >= kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * d;  // (D,)
      T* yr = yp + r * d;
      double sum = 0.0;
      for (int64_t j = 0; j < d; ++j) sum += convert<double>(xr[j]);
      const double mu = sum / double(d);
      // Two passes: var from centred values does not cancel catastrophically when |mean| >> std.
      double sq = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        const double c = convert<double>(xr[j]) - mu;
        sq += c * c;
      }
      const double rs = 1.0 / std::sqrt(sq / double(d) + eps);
      for (int64_t j = 0; j < d; ++j)
        yr[j] = convert<T>((convert<double>(xr[j]) - mu) * rs * w[size_t(j)] + b[size_t(j)]);
      mean_v[size_t(r)] = mu;
      rstd_v[size_t(r)] = rs;
    }
  });
  store_doubles(mean_v, mean);
  store_doubles(rstd_v, rstd);
}

void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dweight,
                        Tensor& dbias) {
  const int64_t d = x.size(-1), rows = rows_of(x, d);
  const std::vector<double> w = to_doubles(weight), mean_v = to_doubles(mean),
                            rstd_v = to_doubles(rstd);
  dispatch_floating(x.dtype(), "layernorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    input_grad<T>(x.data<T>(), dy.data<T>(), mean_v.data(), rstd_v, w, rows, d, dx.data<T>());
    param_grads<T>(x.data<T>(), dy.data<T>(), mean_v.data(), rstd_v, rows, d, dweight, dbias);
  });
}

void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& y, Tensor& rstd) {
  const int64_t d = x.size(-1), rows = rows_of(x, d);
  const std::vector<double> w = to_doubles(weight);
  std::vector<double> rstd_v(static_cast<size_t>(rows));
  dispatch_floating(x.dtype(), "rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * d >= kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * d;  // (D,)
      T* yr = yp + r * d;
      double sq = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        const double v = convert<double>(xr[j]);
        sq += v * v;
      }
      const double rs = 1.0 / std::sqrt(sq / double(d) + eps);
      for (int64_t j = 0; j < d; ++j)
        yr[j] = convert<T>(convert<double>(xr[j]) * rs * w[size_t(j)]);
      rstd_v[size_t(r)] = rs;
    }
  });
  store_doubles(rstd_v, rstd);
}

void rmsnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& rstd, const Tensor& dy,
                      Tensor& dx, Tensor& dweight) {
  const int64_t d = x.size(-1), rows = rows_of(x, d);
  const std::vector<double> w = to_doubles(weight), rstd_v = to_doubles(rstd);
  Tensor no_dbias;
  dispatch_floating(x.dtype(), "rmsnorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    input_grad<T>(x.data<T>(), dy.data<T>(), nullptr, rstd_v, w, rows, d, dx.data<T>());
    param_grads<T>(x.data<T>(), dy.data<T>(), nullptr, rstd_v, rows, d, dweight, no_dbias);
  });
}

}  // namespace seqtrain::cpu
