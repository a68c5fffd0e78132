#include "layers/module.h"

#include "core/ops.h"

namespace seqtrain {

uint64_t name_hash(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

Tensor& Module::add_parameter(const std::string& name, const Shape& shape, Init init, bool weight_decay) {
  for (auto& [n, p] : params_) ST_CHECK(n != name, "parameter '", name, "' declared twice");
  auto p = std::make_shared<Parameter>();
  p->value = Tensor::zeros(shape, DType::F32);
  p->value.set_requires_grad(true);
  p->init = init;
  p->weight_decay = weight_decay;
  params_.emplace_back(name, p);
  return p->value;
}

void Module::collect(const std::string& prefix, std::vector<NamedParameter>& out) {
  for (auto& [n, p] : params_) out.push_back({prefix + n, p.get()});
  for (auto& [n, m] : children_) m->collect(prefix + n + ".", out);
}

std::vector<NamedParameter> Module::named_parameters(const std::string& prefix) {
  std::vector<NamedParameter> out;
  collect(prefix, out);
  return out;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (auto& np : named_parameters()) n += np.param->value.numel();
  return n;
}

void Module::init_parameters(uint64_t seed) {
  for (auto& [name, p] : named_parameters()) {
    Tensor& v = p->value;
    Tensor fresh;
    const Init& in = p->init;
    switch (in.kind) {
      case Init::Kind::Normal: fresh = Tensor::normal(v.shape(), in.a, in.b, seed, name_hash(name), DType::F32, v.device()); break;
      case Init::Kind::Uniform: fresh = Tensor::uniform(v.shape(), in.a, in.b, seed, name_hash(name), DType::F32, v.device()); break;
      case Init::Kind::Zeros: fresh = Tensor::zeros(v.shape(), DType::F32, v.device()); break;
      case Init::Kind::Ones: fresh = Tensor::ones(v.shape(), DType::F32, v.device()); break;
      case Init::Kind::Custom: fresh = in.values(v.shape(), seed, name_hash(name)); break;
    }
    v.copy_(fresh);
  }
}

void Module::to(Device device) {
  for (auto& [name, p] : named_parameters()) {
    if (p->value.device() == device) continue;
    Tensor moved = p->value.to(device);
    moved.set_requires_grad(true);
    p->value = moved;
  }
}

void Module::zero_grad() {
  for (auto& [name, p] : named_parameters()) p->value.zero_grad();
}

}  // namespace seqtrain
