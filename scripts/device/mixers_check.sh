#!/usr/bin/env bash
# On the GPU machine, after scripts/device/gpu_check.sh has built build/: the mixers on the GPU.
#   - the Titans benchmark (Titans-LMM against Mamba-2, Mamba and attention at T 4096, B 1 and 4),
#     with the fused chunk-gradient kernels (the default) and the composed ops (SEQTRAIN_TITANS_FUSED_CUDA=0);
#   - layer-run cases against the plain-PyTorch layers with f32 on the GPU (LAYER_RUN_CUDA=1);
#   - every mixer and hybrid trained, resumed and sampled on the GPU (E2E_DEVICE=cuda e2e.sh mixers).
# Everything is appended to $OUT/mixers_check.log (or out/). Usage: scripts/device/mixers_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-out}"
mkdir -p "$out"
exec > >(tee -a "$out/mixers_check.log") 2>&1
[[ -x build/seqtrain && -x build/seqtrain_titans_bench ]] || { echo "build/ is not built: run scripts/device/gpu_check.sh first"; exit 1; }
bench=(build/seqtrain_titans_bench --device cuda --T 4096 --d_model 512 --n_layers 4 --chunk 64)
"${bench[@]}" --B 1 --mixers titans,titans_d1,mamba2,mamba,attn
SEQTRAIN_TITANS_FUSED_CUDA=0 "${bench[@]}" --B 1 --mixers titans
"${bench[@]}" --B 4 --reps 3 --mixers titans,mamba2
SEQTRAIN_TITANS_FUSED_CUDA=0 "${bench[@]}" --B 4 --reps 3 --mixers titans
py=python3; command -v /usr/bin/python3 >/dev/null && /usr/bin/python3 -c "import torch, h5py" 2>/dev/null && py=/usr/bin/python3
LAYER_RUN_PYTHON=$py LAYER_RUN_CUDA=1 bash tests/e2e/layer_run.sh "$PWD/build/seqtrain" "$PWD" | grep -E "cuda|FAIL|passed"
E2E_DEVICE=cuda bash tests/e2e/e2e.sh mixers "$PWD/build/seqtrain" "$PWD"
