#include "train/hdf5_io.h"

namespace seqtrain::train::hdf5 {

std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? "no detail from HDF5" : reason;
}

H5Id scalar_space(const H5Site& at) { return {H5_CALL(at, H5Screate, H5S_SCALAR), H5Sclose}; }

H5Id simple_space(const Shape& shape, const H5Site& at) {
  if (shape.empty()) return scalar_space(at);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return {H5_CALL(at, H5Screate_simple, int(dims.size()), dims.data(), nullptr), H5Sclose};
}

H5Id utf8_string_type(size_t size, const H5Site& at) {
  H5Id type(H5_CALL(at, H5Tcopy, H5T_C_S1), H5Tclose);
  H5_CALL(at, H5Tset_size, type, size);
  H5_CALL(at, H5Tset_cset, type, H5T_CSET_UTF8);
  return type;
}

H5Id create_group(hid_t parent, const std::string& name, const H5Site& at) {
  H5Id gcpl(H5_CALL(at, H5Pcreate, H5P_GROUP_CREATE), H5Pclose);
  H5_CALL(at, H5Pset_link_creation_order, gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
  return {H5_CALL(at, H5Gcreate2, parent, name.c_str(), H5P_DEFAULT, gcpl, H5P_DEFAULT), H5Gclose};
}

H5Id open_group(hid_t parent, const std::string& name, const H5Site& at) {
  return {H5_CALL(at, H5Gopen2, parent, name.c_str(), H5P_DEFAULT), H5Gclose};
}

H5Id open_dataset(hid_t parent, const std::string& name, const H5Site& at) {
  return {H5_CALL(at, H5Dopen2, parent, name.c_str(), H5P_DEFAULT), H5Dclose};
}

bool has_link(hid_t parent, const std::string& name, const H5Site& at) {
  return H5_CALL(at, H5Lexists, parent, name.c_str(), H5P_DEFAULT) > 0;
}

std::vector<std::string> link_names(hid_t group, LinkOrder order, const H5Site& at) {
  H5_index_t index = H5_INDEX_NAME;
  if (order == LinkOrder::CreationWhereTracked) {
    H5Id gcpl(H5_CALL(at, H5Gget_create_plist, group), H5Pclose);
    unsigned order_flags = 0;
    H5_CALL(at, H5Pget_link_creation_order, gcpl, &order_flags);
    if (order_flags & H5P_CRT_ORDER_INDEXED) index = H5_INDEX_CRT_ORDER;
  }
  std::vector<std::string> names;
  H5_CALL(at, H5Literate, group, index, H5_ITER_INC, nullptr,
          [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
            static_cast<std::vector<std::string>*>(out)->push_back(name);
            return 0;
          },
          &names);
  return names;
}

void write_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value,
                const H5Site& at) {
  H5Id space = scalar_space(at);
  H5Id attr(H5_CALL(at, H5Acreate2, obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  H5_CALL(at, H5Awrite, attr, mem_type, value);
}

void write_attr_str(hid_t obj, const char* name, const std::string& v, const std::string& file) {
  const H5Site at{file, str_cat("attribute '", name, "'")};
  H5Id type = utf8_string_type(H5T_VARIABLE, at);
  const char* p = v.c_str();
  write_attr(obj, name, type, type, &p, at);
}

std::optional<std::string> read_string(hid_t obj, bool is_dataset, const H5Site& at) {
  H5Id type(is_dataset ? H5_CALL(at, H5Dget_type, obj) : H5_CALL(at, H5Aget_type, obj), H5Tclose);
  if (H5_CALL(at, H5Tget_class, type) != H5T_STRING) return std::nullopt;
  std::string out;
  if (H5_CALL(at, H5Tis_variable_str, type) > 0) {
    H5Id mem = utf8_string_type(H5T_VARIABLE, at);
    char* p = nullptr;
    if (is_dataset) {
      H5_CALL(at, H5Dread, obj, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p);
    } else {
      H5_CALL(at, H5Aread, obj, mem, &p);
    }
    if (p) out = p;
    H5free_memory(p);
  } else {
    std::vector<char> buf(H5Tget_size(type));
    if (is_dataset) {
      H5_CALL(at, H5Dread, obj, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    } else {
      H5_CALL(at, H5Aread, obj, type, buf.data());
    }
    out.assign(buf.begin(), buf.end());
    while (!out.empty() && out.back() == '\0') out.pop_back();
  }
  return out;
}

Shape dataset_shape(hid_t dset, const H5Site& at) {
  H5Id space(H5_CALL(at, H5Dget_space, dset), H5Sclose);
  const int rank = H5_CALL(at, H5Sget_simple_extent_ndims, space);
  std::vector<hsize_t> dims(size_t(rank), 0);
  if (rank > 0) H5_CALL(at, H5Sget_simple_extent_dims, space, dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

bool is_float_dataset(hid_t dset, const H5Site& at) {
  H5Id type(H5_CALL(at, H5Dget_type, dset), H5Tclose);
  return H5_CALL(at, H5Tget_class, type) == H5T_FLOAT;
}

void write_tensor(hid_t parent, const std::string& name, const Tensor& t, DType dtype, const H5Site& at) {
  const bool f64 = dtype == DType::F64;
  Tensor host = t.to(Device::cpu()).to(f64 ? DType::F64 : DType::F32).contiguous();
  H5Id space = simple_space(host.shape(), at);
  H5Id dset(H5_CALL(at, H5Dcreate2, parent, name.c_str(), f64 ? H5T_IEEE_F64LE : H5T_IEEE_F32LE, space, H5P_DEFAULT,
                    H5P_DEFAULT, H5P_DEFAULT),
            H5Dclose);
  if (host.numel() > 0)
    H5_CALL(at, H5Dwrite, dset, f64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
            host.data_ptr());
}

Tensor read_tensor(hid_t dset, DType dtype, const H5Site& at) {
  const bool f64 = dtype == DType::F64;
  Tensor out = Tensor::empty(dataset_shape(dset, at), f64 ? DType::F64 : DType::F32);
  if (out.numel() > 0)
    H5_CALL(at, H5Dread, dset, f64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
            out.data_ptr());
  return out;
}

}  // namespace seqtrain::train::hdf5
