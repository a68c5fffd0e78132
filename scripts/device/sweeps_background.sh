#!/usr/bin/env bash
# The shipped GPU sweeps, all at once, across several device calls of one machine hold.
#
#   scripts/device/sweeps_background.sh start [SWEEP ...]   build seqtrain, start the sweeps (default: arch-kjv
#                                                            mqar mqar-attention induction selective-copy
#                                                            assoc-recall) and the 2000-step Titans run in a
#                                                            new process session
#   scripts/device/sweeps_background.sh wait SECONDS        wait until all are done or SECONDS pass, then collect
#   scripts/device/sweeps_background.sh collect             pack the state (no checkpoints) into $OUT/sweeps.tar.gz
#
# Each sweep runs its trials JOBS at a time (default 2; mqar JOBS + 3, mqar-attention JOBS + 2,
# induction and arch-kjv JOBS + 1: the sweeps with the most trial-seconds), so about twenty small
# trainings share the GPU and the 16 CPU cores; on one H100 the five original sweeps (at 2 jobs
# each, mqar 3) finished in about 22 minutes (2026-11-23).
# Outputs go to $SWEEP_ROOT (default /tmp/seqtrain-sweeps), OUTSIDE the repository: the device tool
# re-syncs the working tree at every call and deletes files there that the local checkout lacks,
# which is how a first attempt lost most of its trial folders. Call `start` at the end of one device
# call and `wait` in the next ones without pause (the machine goes back after 30 s idle).
# STATE=DIR (a carried copy of an earlier $SWEEP_ROOT/sweeps) or STATE_TAR=FILE (an archive with a
# sweeps/ folder, e.g. docs/results/sweeps/h100/trials.tar.xz, which travels with the repository)
# seeds a fresh machine: finished trials are skipped, failed ones (crash, oom, timeout) retried.
# TITANS=0 leaves the Titans run out.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=${SWEEP_ROOT:-/tmp/seqtrain-sweeps}
jobs=${JOBS:-2}
out="${OUT:-out}"

collect() {
  [[ -f $root/start ]] || { echo "nothing started in $root"; return 0; }
  mkdir -p "$out"
  tar -C "$root" --exclude=checkpoints --exclude='*.h5' -czf "$out/sweeps.tar.gz" . 2>/dev/null
  echo "after $(( $(date +%s) - $(cat "$root/start") )) s:"
  cat "$root/done" 2>/dev/null
  for f in "$root"/*.log; do echo "  $(basename "$f"): $(grep -c '^\[' "$f") trials ended"; done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
}

case ${1:-} in
start)
  shift
  sweeps=("$@")
  [[ ${#sweeps[@]} -gt 0 ]] || sweeps=(arch-kjv mqar mqar-attention induction selective-copy assoc-recall)
  [[ -s data/kjv/train.bin ]] || { echo "data/kjv/train.bin is missing (carry data/kjv)"; exit 1; }
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSEQTRAIN_CUDA=ON >/tmp/configure.log 2>&1 \
    || { tail -30 /tmp/configure.log; exit 1; }
  cmake --build build -j "$(nproc)" --target seqtrain >/tmp/build.log 2>&1 || { grep -A3 error /tmp/build.log | head -40; exit 1; }
  mkdir -p "$root"
  [[ -n ${STATE:-} && ! -d $root/sweeps ]] && cp -r "$STATE" "$root/sweeps"
  if [[ -n ${STATE_TAR:-} && ! -d $root/sweeps ]]; then
    mkdir -p "$root/unpack" && tar -C "$root/unpack" -xf "$STATE_TAR" && mv "$root/unpack/sweeps" "$root/sweeps" && rm -rf "$root/unpack"
  fi
  date +%s >"$root/start"
  bin=$PWD/build/seqtrain
  # One process session for everything, so that it outlives this device call.
  setsid nohup bash -c '
    root=$1 bin=$2 jobs=$3 titans=$4; shift 4
    [[ $titans == 0 ]] || ( "$bin" train configs/runs/kjv-titans.yaml --set run.device=cuda --set training.steps=2000 \
        --set training.eval_every=250 --set checkpoint.every=500 --set run.dir="$root/titans-2000" \
        >"$root/titans-2000.log" 2>&1
      echo "titans-2000 exit $? after $(( $(date +%s) - $(cat "$root/start") )) s" >>"$root/done" ) &
    for name in "$@"; do
      case $name in mqar) j=$(( jobs + 3 ));; mqar-attention) j=$(( jobs + 2 ));; induction|arch-kjv) j=$(( jobs + 1 ));; *) j=$jobs;; esac
      ( "$bin" sweep configs/sweeps/$name.yaml --out "$root/sweeps/$name" --timeout 900 --jobs $j --retry-failed \
          --set run.device=cuda >"$root/$name.log" 2>&1
        echo "$name exit $? after $(( $(date +%s) - $(cat "$root/start") )) s" >>"$root/done" ) &
    done
    wait
    echo "all done after $(( $(date +%s) - $(cat "$root/start") )) s" >>"$root/done"
  ' _ "$root" "$bin" "$jobs" "${TITANS:-1}" "${sweeps[@]}" >"$root/background.log" 2>&1 </dev/null &
  sleep 5
  collect
  ;;
wait)
  end=$(( $(date +%s) + ${2:-500} ))
  while [[ $(date +%s) -lt $end ]] && ! grep -qs "all done" "$root/done"; do sleep 10; done
  collect
  ;;
collect)
  collect
  ;;
*)
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
  ;;
esac
