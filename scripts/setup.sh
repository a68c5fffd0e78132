#!/usr/bin/env bash
# Install seqtrain's dependencies (Debian/Ubuntu packages only), configure and build in build/, and
# prepare the default corpus (the King James Bible from Debian's bible-kjv) as data/kjv/{train,val}.bin.
# Idempotent: packages already present are not reinstalled; build/ and the shards are reused.
# Usage: scripts/setup.sh [--no-build]   Environment: SEQTRAIN_BUILD_TYPE (default Release),
#        SEQTRAIN_CUDA (ON/OFF, default: ON when nvcc is found), BUILD_DIR (default build),
#        SEQTRAIN_NO_INSTALL=1 (machines without a package archive: skip apt-get, build with what is there).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi

packages=(build-essential cmake ninja-build pkg-config git
          libgtest-dev libgmock-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
          libhdf5-dev hdf5-tools libopenblas-openmp-dev libopenmpi-dev openmpi-bin bible-kjv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})) && [[ -n "${SEQTRAIN_NO_INSTALL:-}" ]]; then
  echo "setup: SEQTRAIN_NO_INSTALL is set; not installing ${missing[*]} (the build may fail without them)" >&2
elif ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || { echo "setup: apt-get update failed" >&2; exit 1; }
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "setup: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

[[ "${1:-}" == "--no-build" ]] && exit 0

build_dir="${BUILD_DIR:-build}"
cuda_flag=()
[[ -n "${SEQTRAIN_CUDA:-}" ]] && cuda_flag=(-DSEQTRAIN_CUDA="$SEQTRAIN_CUDA")
[[ -x /usr/local/cuda/bin/nvcc && -z "${CUDACXX:-}" ]] && export CUDACXX=/usr/local/cuda/bin/nvcc
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${SEQTRAIN_BUILD_TYPE:-Release}" "${cuda_flag[@]}" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
SEQTRAIN_BIN="$build_dir/seqtrain" scripts/prepare_kjv.sh
