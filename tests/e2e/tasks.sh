#!/usr/bin/env bash
# End-to-end tests of the synthetic capability tasks (data.task) and the shipped sweeps through the
# real binary. Usage: tests/e2e/tasks.sh CASE SEQTRAIN_BINARY SOURCE_DIR [MPIRUN]
#   mqar_learns     configs/runs/mqar-tiny.yaml (2-layer attention, MQAR T 32, K 4) reaches >= 90%
#                   answer accuracy on its validation set
#   task_resume     an MQAR run stopped after its step-10 checkpoint and resumed gives the same 20 losses
#                   and the same evaluation as the run straight through (samples by global index)
#   cpu_sweeps      the CPU variants of the three shipped sweeps (configs/sweeps/*-cpu.yaml) run to
#                   completion; results.csv has the task accuracy columns (val_acc, val_acc@L)
#   mpirun_sweep    a 2-trial MQAR sweep with launcher "mpirun -np {nproc}", nproc 2, gives the same
#                   losses and accuracies as the same sweep in single processes (needs MPIRUN)
# Prints what it checks and exits non-zero on the first failure. E2E_DEVICE=cuda runs mqar_learns on
# the GPU (default cpu).
set -uo pipefail
case_name=$1 bin=$2 src=$3 mpirun=${4:-mpirun}
tmp=$(mktemp -d /tmp/seqtrain-tasks.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

fail() { echo "FAIL: $*" >&2; exit 1; }
# A shipped spec with its base made absolute (specs name it relative to the repository root).
spec() { sed "s|^base: configs/|base: $src/configs/|" "$src/configs/sweeps/$1.yaml" >"$1.yaml"; }

case $case_name in
mqar_learns)
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$bin" train "$src/configs/runs/mqar-tiny.yaml" --set run.dir=run \
    --set "run.device=${E2E_DEVICE:-cpu}" >out.txt 2>&1 || fail "training exited $?: $(tail -5 out.txt)"
  python3 - run/metrics.jsonl <<'PY' || fail "accuracy: $(grep eval out.txt)"
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "eval"]
for r in evals: print(f"step {r['step']}: val loss {r['loss']:.4f}, acc {r['acc']:.4f}, seq acc {r['seq_acc']:.4f}")
last = evals[-1]
if "bpb" in last: sys.exit("a task evaluation should not report bits per byte")
if last["acc"] < 0.9: sys.exit(f"final answer accuracy {last['acc']:.4f} < 0.9")
PY
  echo "ok  MQAR (T 32, K 4) on a 2-layer attention model: $(grep 'eval step' out.txt | tail -1 | cut -c12-)"
  ;;
task_resume)
  run() { OMP_NUM_THREADS=1 "$bin" train "$src/configs/runs/mqar-tiny.yaml" --set run.device=cpu --set training.steps=20 \
    --set schedule.warmup_steps=5 --set training.eval_every=10 --set checkpoint.every=10 "$@"; }
  run --set run.dir=straight >straight.txt 2>&1 || fail "straight run: $(tail -5 straight.txt)"
  # The trainer's test hook (train/trainer.h) makes the run fail at step 11, after the step-10 checkpoint.
  SEQTRAIN_TEST_FAIL_RANK=0 SEQTRAIN_TEST_FAIL_STEP=11 run --set run.dir=stopped >stopped.txt 2>&1 \
    && fail "the test hook did not stop the run"
  run --set run.dir=stopped >resumed.txt 2>&1 || fail "resume: $(tail -5 resumed.txt)"
  grep -q "resumed from stopped/checkpoints/step-00000010.h5 at step 10" stopped/logs/rank-0.log || fail "no resume"
  python3 - straight/metrics.jsonl stopped/metrics.jsonl <<'PY' || fail "the resumed run differs"
import json, sys
def lines(path):
    last = {}
    for r in map(json.loads, open(path)): last[(r["kind"], r["step"])] = r
    return last
a, b = lines(sys.argv[1]), lines(sys.argv[2])
if sorted(a) != sorted(b) or len(a) != 22: sys.exit(f"steps differ: {sorted(a)} vs {sorted(b)}")
for k in a:
    for key in ("loss", "acc", "seq_acc"):
        if a[k].get(key) != b[k].get(key): sys.exit(f"{k} {key}: {a[k].get(key)} vs {b[k].get(key)}")
PY
  echo "ok  MQAR stopped at step 11 and resumed from step 10: 20 train losses and 2 evaluations bitwise equal"
  ;;
cpu_sweeps)
  train_bin="$src/data/kjv/train.bin" val_bin="$src/data/kjv/val.bin"
  [[ -s "$train_bin" && -s "$val_bin" ]] || fail "KJV shards missing in $src/data/kjv: run scripts/setup.sh"
  for name in arch-kjv-cpu mqar-cpu induction-cpu; do
    spec $name
    "$bin" sweep $name.yaml --out $name --set "data.train=$train_bin" --set "data.val=$val_bin" >$name.txt 2>&1 \
      || fail "$name exited $?: $(tail -5 $name.txt)"
  done
  python3 - <<'PY' || fail "results.csv"
import csv, sys
def rows(name):
    return list(csv.DictReader(open(f"{name}/results.csv")))
tail = ["code", "n_params", "flops_per_token", "val_loss", "best_val_loss", "val_bpb", "val_acc", "best_val_acc",
        "val_seq_acc"]
speed = ["tokens_per_s", "mfu", "peak_mem_gib", "tokens_seen", "wall_s"]
expect = {
    "arch-kjv-cpu": (["model.code"], tail + speed, 2),
    # The grouped axis `shape` sets three keys in step; each is a column, the label is not.
    "mqar-cpu": (["model.pattern", "training.seq_len", "data.task.mqar.num_kv_pairs", "training.batch_tokens"],
                 tail + speed, 4),
    "induction-cpu": (["model.pattern"], tail + ["val_acc@64"] + speed, 2),
}
for name, (swept, metrics, count) in expect.items():
    r = rows(name)
    columns = ["trial_id", "status"] + swept + metrics
    if list(r[0].keys()) != columns: sys.exit(f"{name}: columns {list(r[0].keys())}, expected {columns}")
    if len(r) != count or any(x["status"] != "ok" for x in r): sys.exit(f"{name}: {r}")
    for x in r:
        task = name != "arch-kjv-cpu"
        if task != (x["val_acc"] != "") or task == (x["val_bpb"] != ""): sys.exit(f"{name}: acc/bpb columns: {x}")
        if task and not all(0 <= float(x[k]) <= 1 for k in metrics if "acc" in k): sys.exit(f"{name}: {x}")
    print(f"{name}: {len(r)} trials ok; columns {', '.join(swept + [m for m in metrics if 'acc' in m])}")
PY
  grep -q "best val_acc: " mqar-cpu.txt || fail "the MQAR sweep should name its best val_acc: $(tail -2 mqar-cpu.txt)"
  grep -q "best val_acc@64: " induction-cpu.txt || fail "the induction sweep should name its best val_acc@64: $(tail -2 induction-cpu.txt)"
  if /usr/bin/python3 -c "import matplotlib, pandas" 2>/dev/null; then
    /usr/bin/python3 "$src/scripts/plot_sweep.py" mqar-cpu --metric val_acc --goal maximize --x training.seq_len \
      >plot.txt 2>&1 || fail "plot_sweep.py: $(cat plot.txt)"
    [[ -s mqar-cpu/metric_vs_x.png && -s mqar-cpu/report.md ]] || fail "plot_sweep.py wrote no accuracy plot"
    echo "ok  plot_sweep.py: accuracy against training.seq_len per model.pattern"
  fi
  echo "ok  the CPU variants of the three shipped sweeps ran; results.csv has the task accuracy columns"
  ;;
mpirun_sweep)
  export OMP_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
  spec mqar-cpu
  # Two trials (attention at two shapes); micro_batch 16 so that two ranks split each step evenly.
  sed -i 's/model.pattern: \[\[attn\], \[mamba\]\]/model.pattern: [[attn]]/' mqar-cpu.yaml
  common=(--set training.micro_batch=16)
  "$bin" sweep mqar-cpu.yaml --out single "${common[@]}" >single.txt 2>&1 || fail "single sweep: $(tail -5 single.txt)"
  sed -e "s|^launcher: null|launcher: \"mpirun -np {nproc}\"|" mqar-cpu.yaml >mpi.yaml
  echo "nproc: 2" >>mpi.yaml
  # The spec's launcher names mpirun; PATH finds the one this build was configured with.
  PATH="$(dirname "$mpirun"):$PATH" "$bin" sweep mpi.yaml --out dp2 "${common[@]}" >dp2.txt 2>&1 \
    || fail "mpirun sweep: $(tail -5 dp2.txt); $(cat dp2/trials/*/output.txt 2>/dev/null | tail -5)"
  for d in dp2/trials/*/; do
    [[ -f $d/logs/rank-1.log ]] || fail "trial $d ran without a second rank: $(ls $d/logs)"
    grep -q "data-parallel ranks" $d/logs/rank-0.log || fail "trial $d is not data parallel"
  done
  python3 - single/results.csv dp2/results.csv <<'PY' || fail "dp=2 differs from one process"
import csv, sys
a, b = (list(csv.DictReader(open(p))) for p in sys.argv[1:3])
if len(a) != 2 or len(b) != 2: sys.exit(f"expected 2 trials each, got {len(a)} and {len(b)}")
for x, y in zip(a, b):
    if x["trial_id"] != y["trial_id"] or x["status"] != "ok" or y["status"] != "ok": sys.exit(f"{x}\n{y}")
    for k in ("val_loss", "val_acc", "val_seq_acc"):
        if abs(float(x[k]) - float(y[k])) > 1e-6 * max(1.0, abs(float(x[k]))): sys.exit(f"{k}: {x[k]} vs {y[k]}")
    print(f"trial {x['trial_id']} (T {x['training.seq_len']}): val loss {x['val_loss']} vs {y['val_loss']}, "
          f"acc {x['val_acc']} vs {y['val_acc']}")
PY
  echo "ok  a 2-trial MQAR sweep through mpirun -np 2 equals the single-process sweep"
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
