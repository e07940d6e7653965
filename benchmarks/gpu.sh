#!/usr/bin/env bash
# Every GPU-capable benchmark once, at GPU-sized batches, within about 8 minutes on one GPU.
#
#   bash benchmarks/gpu.sh [--dry-run] [--wheels DIR] [--out DIR]
#
# Needs python with torch (CUDA build) and transformers. With --wheels DIR, the workbench and
# the rest of its dependencies are installed from the wheels in DIR (no index, no network):
#   pip download -d wheels . && bash benchmarks/gpu.sh --wheels wheels
# Writes one JSON line per benchmark to $OUT/results.jsonl, each benchmark's full output to
# $OUT/<name>.log and a summary table to $OUT/summary.txt ($OUT: --out, else $OUT from the
# environment, else runs/gpu-<date>). --dry-run runs the same steps at toy sizes (on the CPU
# when there is no GPU) to show the script works; its numbers mean nothing.
#
# Not here: the graph task (no CoT model learns it at these budgets).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
WHEELS=""
OUT_DIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (expected --dry-run, --wheels DIR, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT_DIR="${OUT_DIR:-runs/gpu-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT_DIR"
: > "$OUT_DIR/results.jsonl"

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install --no-index --find-links "$WHEELS" -e . >"$OUT_DIR/install.log" 2>&1 \
    || { echo "gpu.sh: installing from $WHEELS failed, see $OUT_DIR/install.log" >&2; exit 1; }
fi
"$PY" -c "import torch, transformers, workbench" \
  || { echo "gpu.sh: needs torch, transformers and the workbench (pass --wheels DIR)" >&2; exit 1; }
DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')")
echo "gpu.sh: device $DEVICE ($NAME), output $OUT_DIR, dry run $DRY"

if [ "$DRY" = 1 ]; then
  ENGINE="--device $DEVICE --batch 8 --batches 8,16 --test-size 32 --ref-examples 4 --rollout-examples 2 --repeat 1"
  RL="--throughput-only --rollouts 16 --tokens 8"
  ENGINE_BF16="--device $DEVICE --batch 8 --batches 16 --test-size 32 --ref-examples 4 --rollout-examples 2 --repeat 1"
  COMPARE="--task arithmetic --methods nocot,atp --scale 0.005 --test-size 32 --usage-size 16"
  RECURSIVE="--device $DEVICE --size 4 --seconds 3 --train-size 50 --test-size 20 --batch-size 16 --arms single,trm,dis:n_sup=3:n=1"
else
  ENGINE="--device $DEVICE --batch 64 --batches 64,256,1024 --test-size 4096 --ref-examples 201 --rollout-examples 64 --repeat 3 --profile"
  RL="--throughput-only --rollouts 4096 --tokens 32"
  ENGINE_BF16="--device $DEVICE --batch 64 --batches 256,1024 --test-size 4096 --ref-examples 100 --rollout-examples 32 --repeat 3"
  COMPARE="--task arithmetic --methods nocot,atp --scale 0.2 --test-size 1000"
  RECURSIVE="--device $DEVICE --size 9 --seconds 25 --train-size 1000 --test-size 500 --batch-size 1024 --arms single,trm,dis:n_sup=3:n=1"
fi

run() {  # name, timeout seconds, command...: keeps the last line (the JSON object)
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS status=0
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1 || status=$?
  local last
  last=$(tail -n 1 "$OUT_DIR/$name.log")
  if [ "$status" = 0 ] && [ "${last:0:1}" = "{" ]; then
    printf '{"benchmark": "%s", "seconds": %d, "result": %s}\n' "$name" $((SECONDS - t0)) "$last" \
      >>"$OUT_DIR/results.jsonl"
    echo "gpu.sh: $name done in $((SECONDS - t0)) s"
  else
    printf '{"benchmark": "%s", "seconds": %d, "error": "exit %s, see %s.log"}\n' \
      "$name" $((SECONDS - t0)) "$status" "$name" >>"$OUT_DIR/results.jsonl"
    echo "gpu.sh: $name FAILED (exit $status), see $OUT_DIR/$name.log" >&2
  fi
}

run latent_engine 120 "$PY" benchmarks/latent_engine.py $ENGINE
run latent_engine_bf16 60 "$PY" benchmarks/latent_engine.py $ENGINE_BF16 --precision bf16
run rl_throughput 60 "$PY" benchmarks/rl.py $RL
# bf16 autocast on a CPU is emulated and several times slower: the CPU dry run trains in fp32
MP=bf16
[ "$DEVICE" = cpu ] && MP=no
run compare_arithmetic $((DRY ? 300 : 150)) "$PY" benchmarks/compare_methods.py $COMPARE --mixed-precision $MP \
  --out "$OUT_DIR/models"
run recursive_sudoku 90 "$PY" benchmarks/recursive.py $RECURSIVE

"$PY" - "$OUT_DIR" "$NAME" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
print(f"benchmarks on {device}")
for r in rows:
    res = r.get("result")
    if res is None:
        print(f"  {r['benchmark']:20s} {r['seconds']:4d} s  {r['error']}")
        continue
    if r["benchmark"].startswith("latent_engine"):
        parts = [f"batch {b}: {e['speedup_vs_reference']:.1f}x, {e['positions_per_s']:.0f} pos/s"
                 for b, e in res["engine"].items()]
        parts += [f"rollouts {b}: {e['speedup_vs_batch1']:.1f}x" for b, e in res["rollouts"].items()]
    elif r["benchmark"] == "recursive_sudoku":
        parts = [f"{x['arm']}: exact {x['exact_acc']:.3f} in {x['train_steps']} steps"
                 for x in res["rows"]]
    elif r["benchmark"] == "rl_throughput":
        tp = res["throughput"]
        parts = [f"{tp['trajectories']} trajectories: {tp['ratio']:.1f}x generate loop"]
    else:
        parts = [f"{m}: {v['accuracy']:.3f}" for m, v in res["methods"].items()]
    print(f"  {r['benchmark']:20s} {r['seconds']:4d} s  " + "; ".join(parts))
EOF
