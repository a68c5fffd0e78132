// HDF5 access with errors that name the file and object: checked C-API calls that throw
// seqtrain::Error, owned ids, and the string and tensor reads and writes shared by checkpoints
// (train/checkpoint.cpp) and layer-run cases (train/layer_run.cpp).
#pragma once
#include <hdf5.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace seqtrain::train::hdf5 {

// HDF5 prints its whole error stack to stderr by default. We report failures ourselves (with
// HDF5's innermost reason), and probing candidate files is expected to fail, so printing is off
// while any public function that touches HDF5 runs.
class QuietHdf5 {
 public:
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The most specific message on HDF5's error stack (e.g. "truncated file: eof = ..."); clears it.
std::string hdf5_reason();

// The file and object an HDF5 call works on, so a failure names both.
struct H5Site {
  std::string file;
  std::string object;

  template <typename T>
  T check(T result, const char* call) const {
    if (result < 0) ST_THROW(call, " failed on ", object, " in ", file, ": ", hdf5_reason());
    return result;
  }
};

// An HDF5 id closed on destruction. close() closes now and reports failure: H5Fclose flushes, so
// its failure means the file was not written.
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~H5Id() {
    if (id_ >= 0) closer_(id_);
  }
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, -1)), closer_(o.closer_) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id& operator=(H5Id&&) = delete;
  operator hid_t() const { return id_; }
  void close(const H5Site& site, const char* call) { site.check(closer_(std::exchange(id_, -1)), call); }

 private:
  hid_t id_;
  Closer closer_;
};

H5Id scalar_space(const H5Site& at);
// A 0-dim tensor maps to a scalar dataspace.
H5Id simple_space(const Shape& shape, const H5Site& at);
H5Id utf8_string_type(size_t size, const H5Site& at);

// Groups track link creation order so readers list parameters in declaration order.
H5Id create_group(hid_t parent, const std::string& name, const H5Site& at);
H5Id open_group(hid_t parent, const std::string& name, const H5Site& at);
H5Id open_dataset(hid_t parent, const std::string& name, const H5Site& at);

// One path component (no '/'), so a missing parent is "false" rather than an HDF5 error.
bool has_link(hid_t parent, const std::string& name, const H5Site& at);

enum class LinkOrder { CreationWhereTracked, Name };
// Link names of a group: by name, or in creation order where the group tracked it (else by name).
std::vector<std::string> link_names(hid_t group, LinkOrder order, const H5Site& at);

void write_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value,
                const H5Site& at);
// Variable-length UTF-8: h5py reads these attributes as str.
void write_attr_str(hid_t obj, const char* name, const std::string& v, const std::string& file);

// Reads a scalar string (variable- or fixed-length, as h5py writes either) of an attribute or a
// dataset; trailing NUL padding of fixed-length strings is dropped. Empty when `obj` does not hold
// a string (callers word that error themselves).
std::optional<std::string> read_string(hid_t obj, bool is_dataset, const H5Site& at);

Shape dataset_shape(hid_t dset, const H5Site& at);
bool is_float_dataset(hid_t dset, const H5Site& at);

// Stored as f64 when `dtype` is F64, else as f32, whatever the tensor's device and dtype.
void write_tensor(hid_t parent, const std::string& name, const Tensor& t, DType dtype, const H5Site& at);
// A CPU tensor, f64 when `dtype` is F64 (so that an f64 file loses nothing), else f32, whatever the
// stored float width: HDF5 converts.
Tensor read_tensor(hid_t dset, DType dtype, const H5Site& at);

}  // namespace seqtrain::train::hdf5

#define H5_CALL(site, fn, ...) (site).check(fn(__VA_ARGS__), #fn)
