#!/usr/bin/env bash
# End-to-end tests of `seqtrain sweep` with configs/sweeps/tiny-cpu.yaml (4 trials of 6 steps) on the
# KJV shards (prepared by scripts/setup.sh), one trial at a time and two at a time (--jobs 2): complete
# runs, kills (SIGKILL; SIGTERM) and re-runs, invalid input.
# Usage: tests/e2e/sweep.sh SEQTRAIN_BINARY SOURCE_DIR
# Prints what it checks and exits non-zero on the first failure.
set -uo pipefail
bin=$1 src=$2
train_bin="$src/data/kjv/train.bin" val_bin="$src/data/kjv/val.bin"
tmp=$(mktemp -d /tmp/seqtrain-sweep.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

fail() { echo "FAIL: $*" >&2; exit 1; }
[[ -s "$train_bin" && -s "$val_bin" ]] || fail "KJV shards missing in $src/data/kjv: run scripts/setup.sh"
# The spec's base and data paths are relative to the repository root; the test runs elsewhere.
sed "s|^base: .*|base: $src/configs/runs/smoke.yaml|" "$src/configs/sweeps/tiny-cpu.yaml" >tiny.yaml
common=(--set "data.train=$train_bin" --set "data.val=$val_bin")

# Expects a failing command: non-zero exit, exactly one line on stderr containing every fragment.
expect_error() {
  local what=$1; shift
  local -a fragments=()
  while [[ $1 != -- ]]; do fragments+=("$1"); shift; done; shift
  "$@" >out.txt 2>err.txt && fail "$what: exit status 0, expected an error"
  [[ $(wc -l <err.txt) -eq 1 ]] || fail "$what: expected one line on stderr, got: $(cat err.txt)"
  for f in "${fragments[@]}"; do grep -qF -- "$f" err.txt || fail "$what: stderr lacks '$f': $(cat err.txt)"; done
  echo "ok  $what: $(cat err.txt)"
}

# results.csv without the columns that vary from run to run.
stable_columns() { python3 -c '
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows: print(",".join(v for k, v in r.items() if k not in ("wall_s", "tokens_per_s", "mfu", "peak_mem_gib")))' "$1"; }

# (1) The whole sweep.
"$bin" sweep tiny.yaml --out straight "${common[@]}" >straight.txt 2>&1 || fail "sweep exited $?: $(tail -5 straight.txt)"
python3 -c '
import csv, sys
rows = list(csv.DictReader(open("straight/results.csv")))
need = ["trial_id", "status", "model.pattern", "model.d_model", "code", "n_params", "flops_per_token", "val_loss",
        "best_val_loss", "val_bpb", "val_acc", "best_val_acc", "val_seq_acc", "tokens_per_s", "mfu", "peak_mem_gib",
        "tokens_seen", "wall_s"]
if list(rows[0].keys()) != need: sys.exit(f"columns {list(rows[0].keys())}, expected {need}")
if len(rows) != 4: sys.exit(f"{len(rows)} rows, expected 4")
if any(r["status"] != "ok" for r in rows): sys.exit(f"not all ok: {rows}")
if len({r["trial_id"] for r in rows}) != 4 or len({r["n_params"] for r in rows}) != 4: sys.exit(f"ids or n_params repeat: {rows}")
if any(float(r["val_loss"]) >= 5.6 or int(r["tokens_seen"]) != 6144 for r in rows): sys.exit(f"values: {rows}")
# CPU runs: no MFU; the stack code, FLOPs per token and the peak resident set are filled in.
if any(r["mfu"] != "" or not r["code"] or float(r["flops_per_token"]) <= 0 or float(r["peak_mem_gib"]) <= 0
       for r in rows): sys.exit(f"code, flops_per_token, mfu or peak_mem_gib: {rows}")' \
  || fail "results.csv"
for d in straight/trials/*/; do
  [[ -f $d/summary.json && -f $d/trial.yaml && -f $d/config.yaml && -f $d/metrics.jsonl && -d $d/checkpoints ]] \
    || fail "trial folder $d lacks summary.json, trial.yaml, config.yaml, metrics.jsonl or checkpoints"
done
[[ -f straight/spec.yaml ]] || fail "no copy of the spec"
[[ $(grep -c '^\[[0-9]/4\] .*: ok, val loss' straight.txt) -eq 4 ]] || fail "expected 4 progress lines: $(cat straight.txt)"
echo "ok  4 trials ok, results.csv with 4 rows and the required columns"

# (2) Killed (SIGKILL, the sweep and its trial) after the first trial finished, then run again.
"$bin" sweep tiny.yaml --out killed "${common[@]}" >killed.txt 2>&1 &
pid=$!
for _ in $(seq 1000); do
  [[ $(ls killed/trials/*/summary.json 2>/dev/null | wc -l) -ge 1 ]] && break
  sleep 0.01
done
child=$(pgrep -P $pid)
kill -9 $pid $child 2>/dev/null; wait $pid 2>/dev/null
done_before=$(ls killed/trials/*/summary.json 2>/dev/null | wc -l)
[[ $done_before -ge 1 ]] || fail "no trial finished before the kill"
[[ $done_before -lt 4 ]] || fail "the sweep finished before it could be killed; nothing was tested"
"$bin" sweep tiny.yaml --out killed "${common[@]}" >resumed.txt 2>&1 || fail "re-run exited $?: $(tail -5 resumed.txt)"
[[ $(grep -c "(done before)" resumed.txt) -eq $done_before ]] || fail "expected $done_before trials skipped: $(cat resumed.txt)"
diff <(stable_columns straight/results.csv) <(stable_columns killed/results.csv) || fail "results differ after the kill"
echo "ok  killed after $done_before of 4 trials; the re-run skipped them and results.csv equals the straight one"

# (3) Two trials at a time: the same results.csv as one at a time, one line per trial.
"$bin" sweep tiny.yaml --out parallel --jobs 2 "${common[@]}" >parallel.txt 2>&1 \
  || fail "--jobs 2 sweep exited $?: $(tail -5 parallel.txt)"
[[ $(grep -c '^\[[0-9]/4\] .*: ok, val loss' parallel.txt) -eq 4 ]] || fail "expected 4 progress lines: $(cat parallel.txt)"
diff <(stable_columns straight/results.csv) <(stable_columns parallel/results.csv) || fail "--jobs 2 results differ"
echo "ok  --jobs 2: results.csv equals the one-at-a-time one"

# Starts a --jobs 2 sweep into $1 in the background (pid in $pid) and waits until one trial finished.
start_parallel_sweep() {
  "$bin" sweep tiny.yaml --out "$1" --jobs 2 "${common[@]}" >"$1.txt" 2>&1 &
  pid=$!
  for _ in $(seq 1000); do
    [[ $(ls "$1"/trials/*/summary.json 2>/dev/null | wc -l) -ge 1 ]] && break
    sleep 0.01
  done
}

# Re-runs the sweep in $1 (--jobs 2) and checks it skipped $2 trials and matches the straight run.
resume_parallel_sweep() {
  "$bin" sweep tiny.yaml --out "$1" --jobs 2 "${common[@]}" >"$1-resumed.txt" 2>&1 \
    || fail "$1: re-run exited $?: $(tail -5 "$1-resumed.txt")"
  [[ $(grep -c "(done before)" "$1-resumed.txt") -eq $2 ]] || fail "$1: expected $2 trials skipped: $(cat "$1-resumed.txt")"
  diff <(stable_columns straight/results.csv) <(stable_columns "$1/results.csv") || fail "$1: results differ after the re-run"
}

# (4) A --jobs 2 sweep killed with SIGKILL together with its trials (a machine reset), then run again.
start_parallel_sweep killed2
children=$(pgrep -P $pid)
kill -9 $pid $children 2>/dev/null; wait $pid 2>/dev/null
done_before=$(ls killed2/trials/*/summary.json 2>/dev/null | wc -l)
[[ $done_before -ge 1 && $done_before -lt 4 ]] || fail "--jobs 2: $done_before of 4 trials done at the kill; expected 1 to 3"
resume_parallel_sweep killed2 "$done_before"
echo "ok  --jobs 2 killed (SIGKILL, sweep and trials) after $done_before of 4 trials; the re-run completed the rest"

# (5) SIGTERM to a --jobs 2 sweep alone: it stops its running trials and exits 143; no trial outlives
# it, none it stopped has a summary, and the re-run completes them.
# (Both first trials may end together, leaving the sweep between trials for a moment: wait for the
# next trial to start.)
start_parallel_sweep stopped
for _ in $(seq 500); do
  children=$(pgrep -P $pid)
  [[ -n $children ]] && break
  sleep 0.01
done
[[ -n $children ]] || fail "SIGTERM: no trial running when the sweep was signalled"
kill -TERM $pid; wait $pid; status=$?
[[ $status -eq 143 ]] || fail "SIGTERM: the sweep exited $status, expected 143: $(tail -5 stopped.txt)"
grep -q "interrupted by SIGTERM; stopped" stopped.txt || fail "SIGTERM: no message: $(tail -5 stopped.txt)"
for c in $children; do ! kill -0 "$c" 2>/dev/null || fail "SIGTERM: trial process $c outlived the sweep"; done
python3 -c '
import json, glob, sys
bad = [f for f in glob.glob("stopped/trials/*/summary.json") if json.load(open(f))["status"] != "ok"]
if bad: sys.exit(f"summaries not ok: {bad}")' || fail "SIGTERM: a stopped trial has a summary"
done_before=$(ls stopped/trials/*/summary.json 2>/dev/null | wc -l)
[[ $done_before -lt 4 ]] || fail "SIGTERM: the sweep finished before it could be stopped; nothing was tested"
resume_parallel_sweep stopped "$done_before"
echo "ok  --jobs 2 stopped by SIGTERM after $done_before of 4 trials (exit 143, no trial left running); the re-run completed the rest"

# (6) The spec changed under finished trials (ids hash only the axis values): the re-run stops before
# starting anything and names the changed key; --rerun-changed moves the old folders aside and re-runs.
cp -r straight changed
"$bin" sweep tiny.yaml --out changed "${common[@]}" --set optimizer.lr=1.23e-4 >changed.txt 2>changed-err.txt \
  && fail "changed config: exit status 0, expected an error"
grep -qF "optimizer.lr: 0.003 vs 0.000123" changed-err.txt && grep -qF -- "--rerun-changed" changed-err.txt \
  || fail "changed config: stderr lacks the key, the new value or the way out: $(cat changed-err.txt)"
grep -q "done before\|^\[" changed.txt && fail "changed config: trials were visited: $(cat changed.txt)"
diff <(stable_columns straight/results.csv) <(stable_columns changed/results.csv) >/dev/null \
  || fail "changed config: results.csv was touched"
"$bin" sweep tiny.yaml --out changed "${common[@]}" --set optimizer.lr=1.23e-4 --rerun-changed >rerun.txt 2>&1 \
  || fail "--rerun-changed exited $?: $(tail -5 rerun.txt)"
[[ $(ls -d changed/trials/*.changed-1 | wc -l) -eq 4 ]] || fail "--rerun-changed: expected 4 folders set aside: $(ls changed/trials)"
[[ $(grep -c '^\[[0-9]/4\] .*: ok, val loss' rerun.txt) -eq 4 ]] || fail "--rerun-changed: expected 4 trials run: $(cat rerun.txt)"
[[ $(grep -l "lr: 0.000123" changed/trials/*/trial.yaml | wc -l) -eq 4 ]] \
  || fail "--rerun-changed: the new trials do not have the new lr"
echo "ok  a changed config stops the re-run naming the key ($(head -2 changed-err.txt | tail -1 | sed 's/^ *//')); --rerun-changed set 4 folders aside and re-ran them"

# (7) Invalid specs and options: one line on stderr, nothing created.
sed 's/^repeats:/repeets:/' tiny.yaml >typo.yaml
expect_error "unknown key" "typo.yaml" "repeets" "did you mean 'repeats'" -- "$bin" sweep typo.yaml --out bad1 "${common[@]}"
sed 's/model.d_model: \[32, 48\]/model.d_model: []/' tiny.yaml >empty.yaml
expect_error "empty axis" "empty.yaml" "grid.model.d_model" "empty" -- "$bin" sweep empty.yaml --out bad2 "${common[@]}"
{ grep -v -e '^method:' -e '^grid:' tiny.yaml
  echo "method: random"; echo "samples: 3"
  echo "random: {optimizer.lr: {dist: loguniform, min: 1.0e-4, max: 3.0e-3}}"; } >dist.yaml
expect_error "bad distribution" "dist.yaml" "random.optimizer.lr.dist" "loguniform" "log_uniform" \
  -- "$bin" sweep dist.yaml --out bad3 "${common[@]}"
{ grep -v -e '^method:' -e '^grid:' tiny.yaml
  echo "method: random"; echo "samples: 3"
  echo "random: {optimizer.lr: {dist: log_uniform, min: 0, max: 3.0e-3}}"; } >dist0.yaml
expect_error "log_uniform from 0" "dist0.yaml" "random.optimizer.lr.min" "min > 0" -- "$bin" sweep dist0.yaml --out bad4 "${common[@]}"
sed 's|^base: .*|base: nothere.yaml|' tiny.yaml >nobase.yaml
expect_error "missing base file" "nobase.yaml" "base" "nothere.yaml" -- "$bin" sweep nobase.yaml --out bad5 "${common[@]}"
sed 's/model.d_model: \[32, 48\]/model.d_modl: [32, 48]/' tiny.yaml >key.yaml
expect_error "invalid trial config" "key.yaml" "trial" "d_modl" -- "$bin" sweep key.yaml --out bad6 "${common[@]}"
sed 's/model.d_model: \[32, 48\]/shape: [{model.d_model: 32, training.seq_len: 32}, 48]/' tiny.yaml >group.yaml
expect_error "grouped axis mixing maps and values" "group.yaml" "grid.shape[1]" "mixes maps and plain values" \
  -- "$bin" sweep group.yaml --out bad7 "${common[@]}"
expect_error "--jobs 0" "--jobs" "'0'" ">= 1" -- "$bin" sweep tiny.yaml --out bad8 --jobs 0 "${common[@]}"
expect_error "--jobs not a number" "--jobs" "'two'" -- "$bin" sweep tiny.yaml --out bad9 --jobs two "${common[@]}"
expect_error "--gpus negative" "--gpus" "'0,-1'" "non-negative" -- "$bin" sweep tiny.yaml --out bad10 --gpus 0,-1 "${common[@]}"
expect_error "--gpus empty entry" "--gpus" "'0,,1'" -- "$bin" sweep tiny.yaml --out bad11 --gpus 0,,1 "${common[@]}"
for d in bad1 bad2 bad3 bad4 bad5 bad6 bad7 bad8 bad9 bad10 bad11; do [[ ! -e $d ]] || fail "$d was created by an invalid spec"; done
echo "ok  invalid specs and options rejected before anything was created"
