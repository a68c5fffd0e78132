#!/usr/bin/env bash
# Install dependencies, build, and run every test this machine can run (ctest labels unit,
# gradcheck, mpi, e2e; cuda tests run where a GPU is present and report "skipped" elsewhere).
# Usage: scripts/test.sh [extra ctest args, e.g. -L unit]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi
start=$(date +%s)
scripts/setup.sh
build_dir="${BUILD_DIR:-build}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"
echo "test.sh: done in $(( $(date +%s) - start )) s"
