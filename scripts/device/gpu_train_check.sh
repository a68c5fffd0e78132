#!/usr/bin/env bash
# On the GPU machine (after scripts/device/gpu_check.sh built build/): the training-level checks in
# one run: `seqtrain bench` for GPT-2 124M beside PyTorch (.device/torch_gpt2.py, eager and
# torch.compile), the attention kernel beside SDPA, and the exact-resume e2e test on the GPU.
# Usage: scripts/device/gpu_train_check.sh   Logs go to $OUT (or out/).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-out}"
mkdir -p "$out"
[[ -x build/seqtrain ]] || { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > "$out/configure.log" 2>&1; cmake --build build -j "$(nproc)" > "$out/build.log" 2>&1 || { grep error "$out/build.log" | head -30; exit 1; }; }
cat > "$out/gpt2_bench.yaml" <<'YAML'
run: {name: gpt2-bench, dir: /tmp/gpt2-bench, device: cuda}
model: {preset: gpt2-124m}
data: {train: data/kjv/train.bin, val: data/kjv/val.bin}
training: {seq_len: 1024, micro_batch: 16, batch_tokens: 16384, steps: 100, precision: bf16, eval_every: 0}
schedule: {warmup_steps: 10}
YAML
./build/seqtrain bench "$out/gpt2_bench.yaml" --steps 20 --warmup 5 2>&1 | tee "$out/seqtrain_gpt2_bench.txt"
[[ -x build/seqtrain_attention_bench ]] && ./build/seqtrain_attention_bench 2>&1 | tee "$out/attention_bench.txt"
python3 scripts/bench/torch_attention.py 2>&1 | tee "$out/torch_attention.txt"
[[ -f .device/torch_gpt2.py ]] && python3 .device/torch_gpt2.py 2>&1 | tee "$out/torch_gpt2.txt"
# Loss curves: seqtrain vs PyTorch, GPT-2 124M, same data, init scheme and hyper-parameters.
rm -rf runs/gpt2-curve
./build/seqtrain train configs/runs/gpt2-curve.yaml > "$out/gpt2_curve_seqtrain.log" 2>&1 || tail -5 "$out/gpt2_curve_seqtrain.log"
cp runs/gpt2-curve/metrics.jsonl "$out/gpt2_curve_seqtrain.jsonl"
python3 scripts/bench/torch_gpt2_curve.py data/kjv/train.bin "$out/gpt2_curve_torch.json" > "$out/gpt2_curve_torch.log" 2>&1 || tail -5 "$out/gpt2_curve_torch.log"
python3 scripts/bench/plot_curves.py "$out/gpt2_curve_seqtrain.jsonl" "$out/gpt2_curve_torch.json" "$out/gpt2_curves.png"
