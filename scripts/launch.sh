#!/usr/bin/env bash
# Launches a data-parallel seqtrain job on this host through mpirun (DESIGN.md §5):
#   scripts/launch.sh -n N [mpirun args ...] -- seqtrain train CONFIG.yaml [--set k=v ...]
# One process per GPU (seqtrain picks cuda:<local rank>), or N CPU processes. Sets:
#   - OMP_NUM_THREADS = cores / N, so N ranks' CPU threads do not oversubscribe the cores
#     (kept if already set);
#   - binding: --bind-to none, because each rank runs an OpenMP team that core binding would
#     squeeze onto one core; --map-by slot keeps local rank = GPU index order;
#   - NCCL_NVLS_ENABLE=0 always: NVLink multicast (NVLS) is never to be enabled on these machines;
#   - OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1 when run as root (containers, CI);
#   - --oversubscribe when N exceeds the cores (CPU tests).
set -euo pipefail
usage() { echo "usage: $0 -n N [mpirun args ...] -- seqtrain train CONFIG.yaml [...]" >&2; exit 2; }
[[ ${1:-} == -n && -n ${2:-} ]] || usage
n=$2; shift 2
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "$0: -n expects a positive process count, got '$n'" >&2; exit 2; }
mpirun_args=()
while [[ $# -gt 0 && $1 != -- ]]; do mpirun_args+=("$1"); shift; done
[[ ${1:-} == -- && $# -ge 2 ]] || usage
shift
command -v mpirun >/dev/null || { echo "$0: mpirun not found; install openmpi-bin (scripts/setup.sh)" >&2; exit 1; }

cores=$(nproc)
threads=$(( cores / n )); (( threads >= 1 )) || threads=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
export NCCL_NVLS_ENABLE=0
env_args=(-x OMP_NUM_THREADS -x NCCL_NVLS_ENABLE)
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
extra=()
(( n > cores )) && extra+=(--oversubscribe)
exec mpirun -np "$n" --bind-to none --map-by slot "${extra[@]}" "${env_args[@]}" "${mpirun_args[@]}" "$@"
