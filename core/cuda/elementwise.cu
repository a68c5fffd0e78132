// Elementwise kernels: unary ops and their backward, broadcasting binary ops, in-place add.
// The math is core/elementwise_math.h, shared with the CPU backend; bf16 is computed in f32 and
// rounded once on store, f64 in double.
#include "core/backend.h"
#include "core/cuda/device_utils.cuh"
#include "core/cuda/runtime.h"

namespace seqtrain::cuda {
namespace {

constexpr unsigned kBlock = 256;

unsigned grid_for_device(size_t work_items, int device) {
  return grid_for(work_items, kBlock, unsigned(sm_count(device)) * 16u);
}

// Calls f(T{}) with T the storage type of a floating dtype.
template <class F>
void dispatch_floating(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(bf16{}); return;
    case DType::F64: f(double{}); return;
    default: ST_THROW("cuda::", op, ": floating dtype expected, got ", dtype_name(dt));
  }
}

// Calls f(std::integral_constant<UnaryOp, op>{}) so each op gets its own kernel with the
// emath switch folded away.
template <class F>
void dispatch_unary(UnaryOp op, F&& f) {
  switch (op) {
#define ST_UNARY_CASE(name) \
  case UnaryOp::name: f(std::integral_constant<UnaryOp, UnaryOp::name>{}); return;
    ST_UNARY_CASE(Neg) ST_UNARY_CASE(Scale) ST_UNARY_CASE(AddScalar) ST_UNARY_CASE(Square)
    ST_UNARY_CASE(Sqrt) ST_UNARY_CASE(Exp) ST_UNARY_CASE(Log) ST_UNARY_CASE(Tanh)
    ST_UNARY_CASE(Sigmoid) ST_UNARY_CASE(Silu) ST_UNARY_CASE(Gelu) ST_UNARY_CASE(Softplus)
    ST_UNARY_CASE(Relu)
#undef ST_UNARY_CASE
  }
  ST_THROW("cuda: unknown unary op");
}

template <class F>
void dispatch_binary(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::Add: f(std::integral_constant<BinaryOp, BinaryOp::Add>{}); return;
    case BinaryOp::Sub: f(std::integral_constant<BinaryOp, BinaryOp::Sub>{}); return;
    case BinaryOp::Mul: f(std::integral_constant<BinaryOp, BinaryOp::Mul>{}); return;
    case BinaryOp::Div: f(std::integral_constant<BinaryOp, BinaryOp::Div>{}); return;
  }
  ST_THROW("cuda: unknown binary op");
}

// Which saved tensors emath::unary_grad reads for each op (the other argument is ignored).
constexpr bool grad_reads_x(UnaryOp op) {
  return op == UnaryOp::Square || op == UnaryOp::Log || op == UnaryOp::Silu ||
         op == UnaryOp::Gelu || op == UnaryOp::Softplus || op == UnaryOp::Relu;
}
constexpr bool grad_reads_y(UnaryOp op) {
  return op == UnaryOp::Sqrt || op == UnaryOp::Exp || op == UnaryOp::Tanh ||
         op == UnaryOp::Sigmoid;
}

// Up to three contiguous inputs of one type; unused slots are null and never read.
template <class T>
struct Inputs {
  const T* p[3];
};

// out[i] = f(in0[i], in1[i], in2[i]) over n contiguous elements, NIN of the inputs live.
// With VEC every pointer is 16-byte aligned and each thread moves whole 16-byte packs; the tail
// (n mod kVec) is done by the first threads. The bound is memory bandwidth:
// (NIN + 1) * n * sizeof(T) bytes against a handful of FLOPs per element (transcendentals
// included, the f32 units outpace HBM for every op here).
template <class T, int NIN, bool VEC, class F>
__global__ void map_kernel(int64_t n, T* out, Inputs<T> in, F f) {
  using A = acc_t<T>;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  int64_t scalar_from = 0;
  if constexpr (VEC) {
    constexpr int V = kVec<T>;
    const int64_t nvec = n / V;
    for (int64_t i = tid; i < nvec; i += nthreads) {
      Vec16<T> x[NIN > 0 ? NIN : 1];
#pragma unroll
      for (int k = 0; k < NIN; ++k) x[k] = load_vec16(in.p[k] + i * V);
      Vec16<T> y;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        A args[3] = {A(0), A(0), A(0)};
#pragma unroll
        for (int k = 0; k < NIN; ++k) args[k] = to_acc(x[k].v[j]);
        y.v[j] = to_storage<T>(f(args[0], args[1], args[2]));
      }
      store_vec16(out + i * V, y);
    }
    scalar_from = nvec * V;
  }
  for (int64_t i = scalar_from + tid; i < n; i += nthreads) {
    A args[3] = {A(0), A(0), A(0)};
#pragma unroll
    for (int k = 0; k < NIN; ++k) args[k] = to_acc(in.p[k][i]);
    out[i] = to_storage<T>(f(args[0], args[1], args[2]));
  }
}

template <class T, int NIN, class F>
void launch_map(int64_t n, T* out, Inputs<T> in, F f, int device, const char* name) {
  if (n == 0) return;
  bool vec = aligned16(out);
  for (int k = 0; k < NIN; ++k) vec = vec && aligned16(in.p[k]);
  cudaStream_t stream = stream_for(device);
  if (vec) {
    const size_t work = size_t(n) / kVec<T> + 1;
    map_kernel<T, NIN, true><<<grid_for_device(work, device), kBlock, 0, stream>>>(n, out, in, f);
  } else {
    map_kernel<T, NIN, false><<<grid_for_device(size_t(n), device), kBlock, 0, stream>>>(n, out,
                                                                                        in, f);
  }
  CUDA_CHECK_LAUNCH(name);
}

template <UnaryOp OP, class A>
struct UnaryFn {
  A alpha;
  __device__ A operator()(A x, A, A) const { return emath::unary(OP, x, alpha); }
};

// Arguments (dy, saved): every op's derivative reads at most one of x and y, passed as `saved`.
template <UnaryOp OP, class A>
struct UnaryGradFn {
  A alpha;
  __device__ A operator()(A dy, A saved, A) const {
    const A x = grad_reads_x(OP) ? saved : A(0);
    const A y = grad_reads_y(OP) ? saved : A(0);
    return dy * emath::unary_grad(OP, x, y, alpha);
  }
};

template <BinaryOp OP>
struct BinaryFn {
  template <class A>
  __device__ A operator()(A a, A b, A) const { return emath::binary(OP, a, b); }
};

// Loads V consecutive elements of an operand whose innermost coalesced stride is 1 (a 16-byte
// pack: pointer and offsets are pack-aligned) or 0 (one broadcast value).
template <class T, int V>
__device__ __forceinline__ Pack<T, V> load_inner(const T* p, bool unit_stride) {
  if (unit_stride) return load_pack<V>(p);
  Pack<T, V> out;
  const T x = *p;
#pragma unroll
  for (int j = 0; j < V; ++j) out.v[j] = x;
  return out;
}

// out[i] = a[off_a(i)] op b[off_b(i)] for broadcast (stride-0) or otherwise strided a, b and
// contiguous out. n elements: 1 FLOP each, up to 3 * n * sizeof(T) bytes (broadcast operands are
// mostly cache hits); bound by memory. With VEC (innermost coalesced dim a multiple of kVec with
// stride 0 or 1 in both operands, e.g. a bias over rows) each thread does a 16-byte pack per
// offset computation; otherwise one element, with one Index divmod per coalesced dim beyond
// the first.
template <class T, BinaryOp OP, class Index, bool VEC>
__global__ void binary_strided_kernel(int64_t n, T* __restrict__ out, const T* __restrict__ a,
                                      const T* __restrict__ b, OffsetCalc<2, Index> calc) {
  const int64_t nthreads = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    constexpr int V = kVec<T>;
    const bool a_unit = calc.strides[0][0] == 1, b_unit = calc.strides[1][0] == 1;
    for (int64_t g = tid; g < n / V; g += nthreads) {
      Index off[2];
      calc.get(Index(g * V), off);
      const Pack<T, V> pa = load_inner<T, V>(a + off[0], a_unit);
      const Pack<T, V> pb = load_inner<T, V>(b + off[1], b_unit);
      Pack<T, V> y;
#pragma unroll
      for (int j = 0; j < V; ++j)
        y.v[j] = to_storage<T>(emath::binary(OP, to_acc(pa.v[j]), to_acc(pb.v[j])));
      store_pack<V>(out + g * V, y);
    }
  } else {
    for (int64_t i = tid; i < n; i += nthreads) {
      Index off[2];
      calc.get(Index(i), off);
      out[i] = to_storage<T>(emath::binary(OP, to_acc(a[off[0]]), to_acc(b[off[1]])));
    }
  }
}

// Whether binary_strided_kernel's VEC path applies (see there).
template <class T, int NARGS, class Index>
bool inner_vectorizable(const OffsetCalc<NARGS, Index>& calc, const void* out,
                        const void* const (&ptrs)[NARGS]) {
  constexpr int V = kVec<T>;
  if (calc.ndim == 0 || calc.sizes[0] % V != 0 || !aligned16(out)) return false;
  for (int k = 0; k < NARGS; ++k) {
    if (calc.strides[k][0] == 0) continue;
    if (calc.strides[k][0] != 1 || !aligned16(ptrs[k])) return false;
    for (int d = 1; d < calc.ndim; ++d)
      if (calc.strides[k][d] % V != 0) return false;
  }
  return true;
}

template <class T, BinaryOp OP, class Index>
void launch_binary_strided(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  const int device = out.device().index;
  const int64_t* strides[2] = {a.strides().data(), b.strides().data()};
  const auto calc = make_offset_calc<2, Index>(int(out.dim()), out.shape().data(), strides);
  const void* ptrs[2] = {a.data_ptr(), b.data_ptr()};
  cudaStream_t stream = stream_for(device);
  if (inner_vectorizable<T>(calc, out.data_ptr(), ptrs)) {
    binary_strided_kernel<T, OP, Index, true>
        <<<grid_for_device(size_t(n) / kVec<T>, device), kBlock, 0, stream>>>(
            n, out.data<T>(), a.data<T>(), b.data<T>(), calc);
  } else {
    binary_strided_kernel<T, OP, Index, false><<<grid_for_device(size_t(n), device), kBlock, 0,
                                                 stream>>>(n, out.data<T>(), a.data<T>(),
                                                           b.data<T>(), calc);
  }
  CUDA_CHECK_LAUNCH("binary_strided_kernel");
}

int64_t offset_extent(const Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * std::abs(t.stride(d));
  return extent;
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, Tensor& y, double alpha) {
  ST_CHECK(x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel(),
           "cuda::unary: contiguous same-size tensors expected, got ", x.desc(), " -> ", y.desc());
  dispatch_floating(x.dtype(), "unary", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    dispatch_unary(op, [&](auto op_c) {
      Inputs<T> in{{x.data<T>(), nullptr, nullptr}};
      launch_map<T, 1>(x.numel(), y.data<T>(), in, UnaryFn<decltype(op_c)::value, A>{A(alpha)},
                       y.device().index, "unary map_kernel");
    });
  });
}

void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx,
                    double alpha) {
  ST_CHECK(dy.is_contiguous() && dx.is_contiguous() && dy.numel() == dx.numel(),
           "cuda::unary_backward: contiguous same-size dy/dx expected, got ", dy.desc(), ", ",
           dx.desc());
  ST_CHECK(!grad_reads_x(op) || (x.defined() && x.is_contiguous()),
           "cuda::unary_backward(", unary_op_name(op), "): needs contiguous x");
  ST_CHECK(!grad_reads_y(op) || (y.defined() && y.is_contiguous()),
           "cuda::unary_backward(", unary_op_name(op), "): needs contiguous y");
  dispatch_floating(dy.dtype(), "unary_backward", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    dispatch_unary(op, [&](auto op_c) {
      constexpr UnaryOp OP = decltype(op_c)::value;
      const UnaryGradFn<OP, A> grad{A(alpha)};
      const T* saved = grad_reads_x(OP) ? x.data<T>() : grad_reads_y(OP) ? y.data<T>() : nullptr;
      const Inputs<T> in{{dy.data<T>(), saved, nullptr}};
      if constexpr (grad_reads_x(OP) || grad_reads_y(OP)) {
        launch_map<T, 2>(dy.numel(), dx.data<T>(), in, grad, dx.device().index,
                         "unary_backward map_kernel");
      } else {
        launch_map<T, 1>(dy.numel(), dx.data<T>(), in, grad, dx.device().index,
                         "unary_backward map_kernel");
      }
    });
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out) {
  ST_CHECK(out.is_contiguous() && a.shape() == out.shape() && b.shape() == out.shape(),
           "cuda::binary: a, b must be views of out's shape, got ", a.desc(), ", ", b.desc(),
           " -> ", out.desc());
  ST_CHECK(out.dim() <= kMaxDims, "cuda::binary: at most ", kMaxDims, " dims, got ", out.desc());
  const int64_t n = out.numel();
  if (n == 0) return;
  const int device = out.device().index;
  dispatch_floating(out.dtype(), "binary", [&](auto tag) {
    using T = decltype(tag);
    dispatch_binary(op, [&](auto op_c) {
      constexpr BinaryOp OP = decltype(op_c)::value;
      if (a.is_contiguous() && b.is_contiguous()) {
        launch_map<T, 2>(n, out.data<T>(), Inputs<T>{{a.data<T>(), b.data<T>(), nullptr}},
                         BinaryFn<OP>{}, device, "binary map_kernel");
        return;
      }
      if (n < INT32_MAX && offset_extent(a) < INT32_MAX && offset_extent(b) < INT32_MAX)
        launch_binary_strided<T, OP, int32_t>(a, b, out);
      else
        launch_binary_strided<T, OP, int64_t>(a, b, out);
    });
  });
}

void add_inplace(Tensor& a, const Tensor& b) {
  ST_CHECK(a.is_contiguous() && b.is_contiguous() && a.numel() == b.numel() &&
               a.dtype() == b.dtype(),
           "cuda::add_inplace: contiguous tensors of one shape and dtype expected, got ",
           a.desc(), " += ", b.desc());
  dispatch_floating(a.dtype(), "add_inplace", [&](auto tag) {
    using T = decltype(tag);
    // out aliases input 0: each element is read and written by the same thread.
    launch_map<T, 2>(a.numel(), a.data<T>(), Inputs<T>{{a.data<T>(), b.data<T>(), nullptr}},
                     BinaryFn<BinaryOp::Add>{}, a.device().index, "add_inplace map_kernel");
  });
}

}  // namespace seqtrain::cuda
