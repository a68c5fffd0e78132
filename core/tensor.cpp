#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "core/backend.h"
#include "core/ops.h"
#ifdef SEQTRAIN_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace seqtrain {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

// ---------------------------------------------------------------- Storage

namespace {
bool g_poison = false;
}
void set_poison_allocations(bool on) { g_poison = on; }
bool poison_allocations() { return g_poison; }

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu()) {
    // 64-byte alignment: whole cache lines, and any SIMD width the compiler picks.
    size_t rounded = (nbytes + 63) / 64 * 64;
    data_ = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    ST_CHECK(!nbytes || data_, "out of host memory allocating ", nbytes, " bytes");
    if (g_poison && data_) std::memset(data_, 0xFF, nbytes);
    return;
  }
#ifdef SEQTRAIN_WITH_CUDA
  ST_CHECK(device.index < cuda_device_count(), "cannot allocate on ", device.str(), ": ",
           cuda_device_count(), " CUDA device(s) available");
  data_ = cuda::pool_alloc(nbytes, device.index);
  if (g_poison && data_)
    CUDA_CHECK(cudaMemsetAsync(data_, 0xFF, nbytes, cuda::compute_stream(device.index)));
#else
  ST_THROW("cannot allocate on ", device.str(), ": seqtrain was built without CUDA (SEQTRAIN_CUDA=OFF)");
#endif
}

Storage::~Storage() {
  if (device_.is_cpu()) {
    std::free(data_);
    return;
  }
#ifdef SEQTRAIN_WITH_CUDA
  // Stream-ordered free on the compute stream: safe while kernels that read it are still queued.
  // Errors cannot propagate from a destructor; a broken context is reported by the next call.
  if (data_) {
    cudaSetDevice(device_.index);
    cudaFreeAsync(data_, cuda::compute_stream(device_.index));
  }
#endif
}

// ---------------------------------------------------------------- creation

static Tensor make_tensor(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) ST_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) { return make_tensor(shape, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = make_tensor(shape, dtype, device);
  ops::fill_(t, value);
  return t;
}
Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

static Tensor random_tensor(const Shape& shape, bool normal, double a, double b, uint64_t seed,
                            uint64_t offset, DType dtype, Device device) {
  ST_CHECK(is_floating(dtype), normal ? "normal" : "uniform", ": dtype ", dtype_name(dtype),
           " is not a floating type");
  Tensor t = make_tensor(shape, dtype, device);
  if (t.numel() == 0) return t;
#ifdef SEQTRAIN_WITH_CUDA
  if (device.is_cuda()) {
    cuda::random(t, normal, a, b, seed, offset);
    return t;
  }
#endif
  cpu::random(t, normal, a, b, seed, offset);
  return t;
}

Tensor Tensor::uniform(const Shape& shape, double lo, double hi, uint64_t seed, uint64_t offset,
                       DType dtype, Device device) {
  return random_tensor(shape, false, lo, hi, seed, offset, dtype, device);
}
Tensor Tensor::normal(const Shape& shape, double mean, double std, uint64_t seed, uint64_t offset,
                      DType dtype, Device device) {
  return random_tensor(shape, true, mean, std, seed, offset, dtype, device);
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype, Device device) {
  ST_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
           " values for shape ", shape_str(shape));
  Tensor host = make_tensor(shape, DType::F64, Device::cpu());
  std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(double));
  return dtype == DType::F64 && device.is_cpu() ? host : host.to(dtype).to(device);
}

Tensor Tensor::from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype, Device device) {
  ST_CHECK(int64_t(values.size()) == shape_numel(shape), "from_ints: ", values.size(),
           " values for shape ", shape_str(shape));
  Tensor host = make_tensor(shape, DType::I64, Device::cpu());
  std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(int64_t));
  return dtype == DType::I64 && device.is_cpu() ? host : host.to(dtype).to(device);
}

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<int64_t> v(size_t(std::max<int64_t>(n, 0)));
  std::iota(v.begin(), v.end(), 0);
  return from_ints(v, {int64_t(v.size())}, dtype, device);
}

// ---------------------------------------------------------------- metadata

TensorImpl& Tensor::checked() const {
  ST_CHECK(impl_, "use of an undefined tensor");
  return *impl_;
}
const Shape& Tensor::shape() const { return checked().shape; }
const Shape& Tensor::strides() const { return checked().strides; }
int64_t Tensor::offset() const { return checked().offset; }
DType Tensor::dtype() const { return checked().dtype; }
Device Tensor::device() const { return checked().storage->device(); }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked().storage; }

static int64_t wrap_dim(int64_t d, int64_t ndim, const char* what) {
  int64_t w = d < 0 ? d + ndim : d;
  ST_CHECK(w >= 0 && w < ndim, what, ": dimension ", d, " out of range for a ", ndim, "-d tensor");
  return w;
}

int64_t Tensor::size(int64_t d) const { return shape()[size_t(wrap_dim(d, dim(), "size"))]; }
int64_t Tensor::stride(int64_t d) const { return strides()[size_t(wrap_dim(d, dim(), "stride"))]; }

bool Tensor::is_contiguous() const {
  const auto& sh = shape();
  const auto& st = strides();
  int64_t expected = 1;
  for (size_t i = sh.size(); i-- > 0;) {
    if (sh[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

std::string Tensor::desc() const {
  if (!defined()) return "undefined";
  return str_cat(dtype_name(dtype()), shape_str(shape()), " ", device().str());
}

void* Tensor::data_ptr() const {
  const TensorImpl& t = checked();
  return static_cast<char*>(t.storage->data()) + t.offset * int64_t(dtype_size(t.dtype));
}

// ---------------------------------------------------------------- views

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  const TensorImpl& t = checked();
  ST_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape_str(shape), " and strides ",
           shape_str(strides), " differ in rank");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = t.dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::view(const Shape& new_shape) const {
  Shape s = new_shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      ST_CHECK(infer < 0, "view: more than one -1 in ", shape_str(new_shape));
      infer = int64_t(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    ST_CHECK(known > 0 && numel() % known == 0, "view: cannot infer -1 in ", shape_str(new_shape),
             " for ", numel(), " elements");
    s[size_t(infer)] = numel() / known;
  }
  ST_CHECK(shape_numel(s) == numel(), "view: shape ", shape_str(new_shape), " has ", shape_numel(s),
           " elements but the tensor ", shape_str(shape()), " has ", numel());
  ST_CHECK(is_contiguous(), "view: tensor ", desc(), " with strides ", shape_str(strides()),
           " is not contiguous; call contiguous() first (or use reshape)");
  return as_strided(s, contiguous_strides(s), offset());
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> order(static_cast<size_t>(dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[size_t(wrap_dim(d0, dim(), "transpose"))], order[size_t(wrap_dim(d1, dim(), "transpose"))]);
  return permute(order);
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  ST_CHECK(int64_t(order.size()) == dim(), "permute: order of length ", order.size(), " for a ",
           dim(), "-d tensor");
  Shape s(order.size()), st(order.size());
  std::vector<bool> seen(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t d = wrap_dim(order[i], dim(), "permute");
    ST_CHECK(!seen[size_t(d)], "permute: dimension ", d, " repeated in the order");
    seen[size_t(d)] = true;
    s[i] = shape()[size_t(d)];
    st[i] = strides()[size_t(d)];
  }
  return as_strided(s, st, offset());
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  int64_t w = wrap_dim(d, dim(), "slice");
  int64_t n = shape()[size_t(w)];
  ST_CHECK(0 <= start && start <= end && end <= n, "slice: range [", start, ", ", end,
           ") out of bounds for dimension ", d, " of size ", n, " in ", desc());
  Shape s = shape();
  s[size_t(w)] = end - start;
  return as_strided(s, strides(), offset() + start * strides()[size_t(w)]);
}

Tensor Tensor::expand(const Shape& target) const {
  ST_CHECK(target.size() >= shape().size(), "expand: cannot expand ", shape_str(shape()), " to ",
           shape_str(target));
  size_t lead = target.size() - shape().size();
  Shape st(target.size(), 0);
  for (size_t i = 0; i < shape().size(); ++i) {
    int64_t have = shape()[i], want = target[lead + i];
    ST_CHECK(have == want || have == 1, "expand: cannot expand ", shape_str(shape()), " to ",
             shape_str(target), " (dimension ", i, ": ", have, " vs ", want, ")");
    st[lead + i] = have == want ? strides()[i] : 0;
  }
  return as_strided(target, st, offset());
}

// ---------------------------------------------------------------- copies

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor out = empty(shape(), dtype(), d);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType t) const {
  if (t == dtype()) return *this;
  Tensor out = empty(shape(), t, device());
  out.copy_(*this);
  return out;
}

void Tensor::copy_(const Tensor& src) {
  ST_CHECK(src.shape() == shape(), "copy_: source ", src.desc(), " and destination ", desc(),
           " differ in shape");
  if (numel() == 0) return;
  if (src.device() == device()) {
#ifdef SEQTRAIN_WITH_CUDA
    if (device().is_cuda()) {
      cuda::copy(src, *this);
      return;
    }
#endif
    cpu::copy(src, *this);
    return;
  }
#ifdef SEQTRAIN_WITH_CUDA
  // Across devices: move a dense block in the source dtype, then let the destination backend
  // convert dtype and scatter into strides.
  Tensor dense = src.contiguous();
  Tensor staged = (is_contiguous() && dtype() == src.dtype()) ? *this : empty(shape(), src.dtype(), device());
  if (src.is_cuda() && device().is_cuda()) {
    cuda::synchronize(src.device().index);  // the source must be complete before the peer copy
    CUDA_CHECK(cudaMemcpyPeerAsync(staged.data_ptr(), device().index, dense.data_ptr(),
                                   src.device().index, dense.nbytes(), cuda::stream_for(device().index)));
  } else if (device().is_cuda()) {
    CUDA_CHECK(cudaMemcpyAsync(staged.data_ptr(), dense.data_ptr(), dense.nbytes(),
                               cudaMemcpyHostToDevice, cuda::stream_for(device().index)));
  } else {
    cudaStream_t s = cuda::stream_for(src.device().index);
    CUDA_CHECK(cudaMemcpyAsync(staged.data_ptr(), dense.data_ptr(), dense.nbytes(), cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
  }
  if (!staged.same(*this)) copy_(staged);
#else
  ST_THROW("copy_: ", src.desc(), " -> ", desc(), ": seqtrain was built without CUDA");
#endif
}

std::vector<double> Tensor::to_vector() const {
  Tensor host = to(Device::cpu()).to(DType::F64).contiguous();
  const double* p = host.data<double>();
  return std::vector<double>(p, p + host.numel());
}

std::vector<int64_t> Tensor::to_ints() const {
  Tensor host = to(Device::cpu()).to(DType::I64).contiguous();
  const int64_t* p = host.data<int64_t>();
  return std::vector<int64_t>(p, p + host.numel());
}

double Tensor::item() const {
  ST_CHECK(numel() == 1, "item: tensor ", desc(), " has ", numel(), " elements, expected 1");
  return to_vector()[0];
}

// ---------------------------------------------------------------- autograd accessors

bool Tensor::requires_grad() const { return checked().requires_grad; }

Tensor& Tensor::set_requires_grad(bool r) {
  ST_CHECK(is_leaf(), "set_requires_grad: only leaf tensors can change requires_grad; use detach()");
  ST_CHECK(!r || is_floating(dtype()), "set_requires_grad: ", desc(), " is not floating point");
  checked().requires_grad = r;
  return *this;
}

const Tensor& Tensor::grad() const { return checked().grad; }
void Tensor::set_grad(const Tensor& g) { checked().grad = g; }
void Tensor::zero_grad() { checked().grad = Tensor(); }
const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const { return checked().grad_fn; }
int Tensor::output_nr() const { return checked().output_nr; }

Tensor Tensor::detach() const { return as_strided(shape(), strides(), offset()); }

}  // namespace seqtrain
