#!/usr/bin/env bash
# On the GPU machine: build with every core, run the CUDA tests and the exact-resume test on the
# GPU, then the op microbenchmarks beside PyTorch's, all in one run. Everything is appended to
# $OUT/gpu_check.log (or out/), with the full ctest output in $OUT/ctest_cuda.log.
# Usage: scripts/device/gpu_check.sh [--no-bench]   FULL_CTEST=1 also runs the CPU labels.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-out}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee -a "$log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQTRAIN_CUDA=ON > /tmp/configure.log 2>&1 \
  || { tail -30 /tmp/configure.log; exit 1; }
cmake --build build -j "$(nproc)" > /tmp/build.log 2>&1 || { grep -E "error" -A3 /tmp/build.log | head -60; exit 1; }
echo "build ok"
( cd build && ctest --output-on-failure -j 8 -L cuda > "$out/ctest_cuda.log" 2>&1; tail -4 "$out/ctest_cuda.log" )
grep -E "\*\*\*Failed|Failure|Expected" "$out/ctest_cuda.log" | head -40
# Exact resume on the GPU (bitwise-identical losses after SIGKILL + resume).
E2E_DEVICE=cuda bash tests/e2e/e2e.sh resume_exact "$PWD/build/seqtrain" "$PWD"
[[ -n "${FULL_CTEST:-}" ]] && ( cd build && ctest -j 16 -LE cuda 2>&1 | tail -3 )
[[ "${1:-}" == "--no-bench" ]] && exit 0
./build/seqtrain_ops_bench
python3 scripts/bench/torch_ops.py
