#!/usr/bin/env bash
# On the GPU machine: build, check that the tiny MQAR run learns on the GPU (tests/e2e/tasks.sh
# mqar_learns), then run shipped sweeps one after another (JOBS trials of each at once) with a
# per-trial time limit and copy what they produced, without checkpoints, to $OUT/sweeps/<name>/
# (results.csv, report.md, plots, and each trial's summary.json, metrics.jsonl, config and logs).
# The log is $OUT/task_sweeps.log.
# Usage: scripts/device/task_sweeps.sh [quick|full] [SWEEP ...]
#   quick (default): configs/sweeps/<name>-quick.yaml, about 3 minutes each on an H100
#   full:            configs/sweeps/<name>.yaml (10-15 minutes each)
#   SWEEP: arch-kjv, mqar, induction (default: all three; arch-kjv needs data/kjv/{train,val}.bin)
#   TRIAL_TIMEOUT: seconds before a trial is killed (status timeout); default 60 quick, 240 full
#   JOBS: trials run at once (seqtrain sweep --jobs; they share the GPU, so each trial's wall time,
#     which TRIAL_TIMEOUT limits, grows); default 4
#   SKIP_LEARN_CHECK=1: skip the MQAR check (e.g. on the second and third call)
set -uo pipefail
cd "$(dirname "$0")/../.."
variant=${1:-quick}
[[ $variant == quick || $variant == full ]] || { echo "usage: $0 [quick|full] [SWEEP ...]" >&2; exit 2; }
shift $(( $# > 0 ? 1 : 0 ))
sweeps=("$@")
[[ ${#sweeps[@]} -gt 0 ]] || sweeps=(mqar induction arch-kjv)
timeout_s=${TRIAL_TIMEOUT:-$([[ $variant == quick ]] && echo 60 || echo 240)}
jobs=${JOBS:-4}
out="${OUT:-out}"
mkdir -p "$out/sweeps"
exec > >(tee -a "$out/task_sweeps.log") 2>&1

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQTRAIN_CUDA=ON > /tmp/configure.log 2>&1 \
  || { tail -30 /tmp/configure.log; exit 1; }
cmake --build build -j "$(nproc)" --target seqtrain > /tmp/build.log 2>&1 \
  || { grep -E "error" -A3 /tmp/build.log | head -60; exit 1; }
if [[ -z "${SKIP_LEARN_CHECK:-}" ]]; then
  start=$(date +%s)
  E2E_DEVICE=cuda bash tests/e2e/tasks.sh mqar_learns "$PWD/build/seqtrain" "$PWD"
  echo "mqar_learns on the GPU: $(( $(date +%s) - start )) s"
fi

for name in "${sweeps[@]}"; do
  spec=configs/sweeps/$name$([[ $variant == quick ]] && echo -quick).yaml
  [[ -f $spec ]] || { echo "no sweep $spec"; continue; }
  if [[ $name == arch-kjv && ! -s data/kjv/train.bin ]]; then
    echo "skipping $spec: data/kjv/train.bin is missing (carry data/kjv, or run scripts/prepare_kjv.sh)"
    continue
  fi
  dir=sweeps/$(basename "$spec" .yaml)
  start=$(date +%s)
  build/seqtrain sweep "$spec" --out "$dir" --timeout "$timeout_s" --jobs "$jobs" --set run.device=cuda
  echo "$spec: $(( $(date +%s) - start )) s"
  cat "$dir/results.csv"
  mkdir -p "$out/$dir"
  tar -C "$dir" --exclude=checkpoints -cf - . | tar -C "$out/$dir" -xf -
done
