#!/usr/bin/env bash
# The CUDA check (under 5 minutes on one GPU), from a fresh checkout after `make setup`:
#   1. the environment (GPU, driver, torch, CUDA, cuDNN);
#   2. the tests that run engine code on a device (`pytest -m device`, on $DEVICE);
#   3. a small grid, fp32 and bf16 (benchmarks/gpu_check.toml, `tlbench run --device $DEVICE`);
#   4. the throughput benchmarks: feature extraction vs timm's benchmark loop at batch 64 and
#      256, and the training loop vs a bare loop, each in fp32 and bf16;
# and writes one Markdown summary (and the benchmarks' JSON lines next to it).
#
#   benchmarks/gpu_check.sh [SUMMARY]       # default: $OUT/gpu_summary.md, else results/benchmarks/
#   DEVICE=cpu benchmarks/gpu_check.sh      # the CPU fallback: checks the script, skips GPU-only steps
#
# Every step runs under its own time limit (multiplied by $TIME_SCALE, default 1, for a slow or
# busy machine); a failing step is recorded and the others still run. The exit code is the number
# of failed steps.
set -u -o pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-.venv/bin/python}
if [ -n "${1:-}" ]; then SUMMARY=$1
elif [ -n "${OUT:-}" ]; then SUMMARY=$OUT/gpu_summary.md
else SUMMARY=results/benchmarks/gpu_summary.md; fi
mkdir -p "$(dirname "$SUMMARY")"
WORK=$(mktemp -d -t tlbench-gpu-check-XXXXXX)
export TLBENCH_CACHE=$WORK/cache                     # cold: nothing computed before this check
export TLBENCH_BENCH_LOG=${SUMMARY%.md}.jsonl
export HF_HUB_OFFLINE=1
FAILED=0
START=$(date +%s)

if [ "$DEVICE" = cpu ]; then
    # The fallback only proves the script: tiny sizes, fp32, no bf16 grid cells.
    GRID_SELECT=(--strategy partial-unfreeze-fp32)
    FEATURES_ARGS=(--px 32 --images 512 --repeats 1 --batches 64 256)
    OVERHEAD_ARGS=(--px 32 --images 256 --rounds 1)
    PRECISIONS=(fp32)
else
    GRID_SELECT=()
    FEATURES_ARGS=(--px 64 --images 1400 --repeats 3 --batches 64 256)
    OVERHEAD_ARGS=(--px 64 --images 1024 --rounds 3)
    PRECISIONS=(fp32 bf16)
fi

section() { printf '\n## %s\n\n' "$1" >> "$SUMMARY"; }

# step NAME SECONDS COMMAND...: run it, keep its output, record status and time in the summary.
step() {
    local name=$1 limit=$(( $2 * ${TIME_SCALE:-1} )); shift 2
    local log=$WORK/$name.log t0=$(date +%s) rc
    echo "== $name: $*"
    timeout "$limit" "$@" > "$log" 2>&1; rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then echo "ok ($took s)"; else echo "FAILED rc=$rc ($took s)"; FAILED=$((FAILED + 1)); fi
    section "$name: $( [ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc$( [ $rc -eq 124 ] && echo ', time limit'))" ), $took s"
    printf '`%s`\n\n```\n' "$*" >> "$SUMMARY"
    tail -n "${TAIL:-60}" "$log" >> "$SUMMARY"
    printf '```\n' >> "$SUMMARY"
    return 0
}

{
    echo "# tlbench GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
    echo "- device asked: $DEVICE"
    echo "- load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
} > "$SUMMARY"

if [ "$DEVICE" != cpu ]; then
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "no CUDA device visible to torch; run with DEVICE=cpu for the fallback" | tee -a "$SUMMARY"
        exit 1
    fi
    command -v nvidia-smi > /dev/null && step nvidia-smi 30 nvidia-smi
fi
step environment 60 "$PY" -c '
import json, torch
from tlbench.results import hardware
info = hardware()
info["torch"] = torch.__version__
if torch.cuda.is_available():
    info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["capability"] = torch.cuda.get_device_capability()
print(json.dumps(info, indent=1))'

TAIL=25 step device-tests 150 env TLBENCH_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m device tests/

step grid 240 "$PY" -m tlbench run benchmarks/gpu_check.toml --device "$DEVICE" \
    --out "$WORK/grid" --cache-dir "$TLBENCH_CACHE" -q "${GRID_SELECT[@]}"
step grid-table 60 "$PY" - "$WORK/grid/cells.jsonl" <<'PYEOF'
import sys
from tlbench.results import read_records
print("| strategy | status | precision | top-1 | val top-1 | cell s | train img/s | peak MiB | epochs trained / exhaustive |")
print("|---|---|---|---|---|---|---|---|---|")
for r in read_records(sys.argv[1]):
    m, c, h = r.get("metrics", {}), r.get("cost", {}), r.get("hparams", {})
    s = h.get("sweep_schedule") or {}
    print(f"| {r['strategy']} | {r['status']} | {h.get('precision', c.get('precision'))} | {m.get('top1')} "
          f"| {m.get('val_top1')} | {c.get('wall_s')} | {c.get('throughput_img_s')} | {c.get('peak_mem_mb')} "
          f"| {s.get('epochs_trained', '-')} / {s.get('epochs_exhaustive', '-')} |")
    if r.get("error"):
        print(f"\n{r['strategy']}: {r['error'].get('message')}\n")
PYEOF

for precision in "${PRECISIONS[@]}"; do
    TAIL=20 step "features-$precision" 120 "$PY" benchmarks/bench_features.py --device "$DEVICE" \
        --dataset digits --precision "$precision" "${FEATURES_ARGS[@]}"
    TAIL=20 step "overhead-$precision" 120 "$PY" benchmarks/bench_overhead.py --device "$DEVICE" \
        --dataset digits --precision "$precision" "${OVERHEAD_ARGS[@]}"
done

section "total: $(( $(date +%s) - START )) s, $FAILED failed step(s)"
echo "summary: $SUMMARY ($FAILED failed step(s))"
rm -rf "$WORK"
exit "$FAILED"
