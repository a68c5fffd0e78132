// Tensor: a shared handle to (storage, shape, strides, offset, dtype) plus autograd metadata.
// Copies of a Tensor alias the same TensorImpl (like torch.Tensor); views share storage.
// Methods here never record autograd history: the differentiable ops are the free functions in
// autograd/functions.h, the raw (history-free) ops are in core/ops.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace seqtrain {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

namespace autograd {
class Node;
}

// Debugging aid for tests: when on, every new Storage is filled with 0xFF bytes (NaN in every
// floating dtype, -1 in the integer ones), so an element a kernel forgot to write shows up.
void set_poison_allocations(bool on);
bool poison_allocations();

// A block of memory on one device. CUDA blocks come from the stream-ordered pool of the device's
// compute stream (core/cuda/runtime.h) and are returned to it when the last reference goes.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
};

class Tensor;
struct TensorImpl;

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() == false
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (no autograd history; results are contiguous) ----
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype, Device device = Device::cpu());
  // Philox draws: element i of the result is a pure function of (seed, offset, i), identical on
  // CPU and GPU. uniform in [lo, hi), normal with the given mean and std.
  static Tensor uniform(const Shape& shape, double lo, double hi, uint64_t seed, uint64_t offset,
                        DType dtype, Device device = Device::cpu());
  static Tensor normal(const Shape& shape, double mean, double std, uint64_t seed, uint64_t offset,
                       DType dtype, Device device = Device::cpu());
  // Host values converted to `dtype`; values.size() must equal the shape's element count.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype,
                            Device device = Device::cpu());
  static Tensor from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype,
                          Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype, Device device = Device::cpu());

  // ---- metadata ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t d) const;    // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(shape()); }
  int64_t offset() const;
  DType dtype() const;
  Device device() const;
  bool is_cuda() const { return device().is_cuda(); }
  bool is_contiguous() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }
  std::string desc() const;  // "f32[2, 3] cuda:0" for error messages

  // Pointer to element 0 of this view (storage base + offset).
  void* data_ptr() const;
  template <typename T>
  T* data() const { return static_cast<T*>(data_ptr()); }
  const std::shared_ptr<Storage>& storage() const;

  // ---- raw views (share storage; no autograd history) ----
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;
  Tensor view(const Shape& shape) const;  // contiguous input; one entry may be -1
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;  // [start, end) along dim
  Tensor expand(const Shape& shape) const;  // broadcast to shape with stride-0 dimensions

  // ---- raw copies (no autograd history) ----
  Tensor contiguous() const;  // returns *this when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  void copy_(const Tensor& src);  // same shape; any device, dtype and strides

  // Host values as double / int64 (copies from the device if needed).
  std::vector<double> to_vector() const;
  std::vector<int64_t> to_ints() const;
  double item() const;  // single-element tensor

  // ---- autograd ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r);  // leaves only
  const Tensor& grad() const;         // undefined until a backward reaches this leaf
  void set_grad(const Tensor& g);
  void zero_grad();                   // drops the gradient
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  int output_nr() const;
  bool is_leaf() const { return grad_fn() == nullptr; }
  Tensor detach() const;  // same storage, no history
  // Runs the backward engine from this tensor (a scalar unless `grad` is given).
  void backward(const Tensor& grad = Tensor()) const;

  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  TensorImpl& checked() const;
  std::shared_ptr<TensorImpl> impl_;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  // autograd
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<autograd::Node> grad_fn;
  int output_nr = 0;
};

}  // namespace seqtrain
