#include "layers/mixer.h"

#include "core/error.h"
#include "layers/aaren/aaren.h"
#include "layers/attention/attention.h"
#include "layers/hedgehog/hedgehog.h"
#include "layers/mamba/mamba.h"

namespace seqtrain {

// Explicit (not static-initialiser) registration: objects of a static library that nothing
// references are dropped by the linker, and their registrations with them.
const std::map<std::string, MixerFactory>& mixer_registry() {
  static const std::map<std::string, MixerFactory> registry = {
      {"attn", make_attention_mixer},
      {"mamba", make_mamba_mixer},
      {"hedgehog", make_hedgehog_mixer},
      {"aaren", make_aaren_mixer},
  };
  return registry;
}

std::shared_ptr<Mixer> make_mixer(const std::string& type, const MixerArgs& args) {
  auto it = mixer_registry().find(type);
  if (it == mixer_registry().end()) {
    std::string known;
    for (auto& [name, f] : mixer_registry()) known += (known.empty() ? "" : ", ") + name;
    ST_THROW("layer ", args.layer_index, ": unknown mixer type '", type, "'; known types: ", known);
  }
  return it->second(args);
}

}  // namespace seqtrain
