#!/usr/bin/env bash
# On the GPU machine: build with every core, run the whole test suite (CUDA tests included), then
# the op microbenchmarks beside PyTorch's, all in one run. Logs go to $OUT (or out/).
# Usage: scripts/device/gpu_check.sh [--no-bench]
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQTRAIN_CUDA=ON > "$out/configure.log" 2>&1 \
  || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build -j "$(nproc)" > "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
echo "build ok"
( cd build && ctest --output-on-failure -j 8 -L cuda > "$out/ctest_cuda.log" 2>&1; tail -5 "$out/ctest_cuda.log" )
grep -E "Failed|\*\*\*|Exception" "$out/ctest_cuda.log" | head -40
# Exact resume on the GPU (bitwise-identical losses after SIGKILL + resume).
E2E_DEVICE=cuda bash tests/e2e/e2e.sh resume_exact "$PWD/build/seqtrain" "$PWD" 2>&1 | tee "$out/e2e_resume_gpu.log"
[[ -n "${FULL_CTEST:-}" ]] && ( cd build && ctest -j 16 -LE cuda > "$out/ctest_cpu.log" 2>&1; tail -3 "$out/ctest_cpu.log" )
[[ "${1:-}" == "--no-bench" ]] && exit 0
./build/seqtrain_ops_bench --json "$out/ops_bench.json" 2>&1 | tee "$out/ops_bench.txt"
python3 scripts/bench/torch_ops.py 2>&1 | tee "$out/torch_ops.txt"
