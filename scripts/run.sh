#!/usr/bin/env bash
# The quick start: install dependencies, build, prepare the KJV corpus, train the default model
# and print a sample. Uses configs/runs/kjv-gpu.yaml when a GPU is present, else
# configs/runs/kjv-cpu.yaml (about 6 minutes of training on 2 CPU cores).
# Usage: scripts/run.sh [--set key=value ...]   (extra arguments go to `seqtrain train`)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi
start=$(date +%s)
scripts/setup.sh
bin="${BUILD_DIR:-build}/seqtrain"
if nvidia-smi -L >/dev/null 2>&1; then config=configs/runs/kjv-gpu.yaml; else config=configs/runs/kjv-cpu.yaml; fi
echo "run.sh: training $config (setup took $(( $(date +%s) - start )) s)"
"$bin" train "$config" "$@"
run_dir=$(sed -n 's/^  dir: *//p' "$config" | head -1)  # run.dir (generate picks its newest checkpoint)
echo
echo "run.sh: a sample from $run_dir:"
echo "----------------------------------------------------------------------"
"$bin" generate --checkpoint "$run_dir" --prompt "And it came to pass" --tokens 400 --temperature 0.8
echo "----------------------------------------------------------------------"
echo "run.sh: done in $(( $(date +%s) - start )) s"
