#!/usr/bin/env bash
# On the GPU machine (after scripts/device/gpu_check.sh built build/): `seqtrain bench` for GPT-2
# 124M beside PyTorch (.device/torch_gpt2.py, eager and torch.compile), the attention kernel beside
# SDPA, and the 200-step loss curves of seqtrain and PyTorch on the same data, plotted.
# Everything is appended to $OUT/gpu_train_check.log (or out/); curves in $OUT/gpt2_curves.png.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-out}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu_train_check.log") 2>&1
[[ -x build/seqtrain ]] || { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /tmp/configure.log 2>&1; cmake --build build -j "$(nproc)" > /tmp/build.log 2>&1 || { grep error /tmp/build.log | head -30; exit 1; }; }
cat > /tmp/gpt2_bench.yaml <<'YAML'
run: {name: gpt2-bench, dir: /tmp/gpt2-bench, device: cuda}
model: {preset: gpt2-124m}
data: {train: data/kjv/train.bin, val: data/kjv/val.bin}
training: {seq_len: 1024, micro_batch: 16, batch_tokens: 16384, steps: 100, precision: bf16, eval_every: 0}
schedule: {warmup_steps: 10}
YAML
./build/seqtrain bench /tmp/gpt2_bench.yaml --steps 20 --warmup 5
./build/seqtrain_attention_bench
python3 scripts/bench/torch_attention.py
[[ -f .device/torch_gpt2.py ]] && python3 .device/torch_gpt2.py
# Loss curves: seqtrain vs PyTorch, GPT-2 124M, same data, init scheme and hyper-parameters.
rm -rf runs/gpt2-curve
./build/seqtrain train configs/runs/gpt2-curve.yaml > /tmp/curve.log 2>&1 || tail -5 /tmp/curve.log
cp runs/gpt2-curve/metrics.jsonl "$out/gpt2_curve_seqtrain.jsonl"
python3 scripts/bench/torch_gpt2_curve.py data/kjv/train.bin "$out/gpt2_curve_torch.json" > /tmp/curve_torch.log 2>&1 || tail -5 /tmp/curve_torch.log
python3 scripts/bench/plot_curves.py "$out/gpt2_curve_seqtrain.jsonl" "$out/gpt2_curve_torch.json" "$out/gpt2_curves.png"
