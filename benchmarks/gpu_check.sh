#!/usr/bin/env bash
# The CUDA check (about 8 minutes on one H100), from a fresh checkout after `make setup`. Each
# check prints PASS or FAIL and the script writes one Markdown summary (checks table first):
#   environment     GPU, driver, torch, CUDA, cuDNN, compute capability, native bf16
#   device-tests    the tests that run engine code on a device (`pytest -m device`, on $DEVICE)
#   images          a JPEG image folder at 256 px (digits drawn large, tinted, noisy), read at
#                   $PX px (224 on a GPU) through the streaming data path
#   grid            linear probe (fp32, bf16, fp16), partial unfreezing and LP-FT with
#                   augmentation, full fine-tuning in bf16 and fp16, BitFit and LoRA (peft), on
#                   $DEVICE; every cell must finish `ok`
#   grid-cpu        the fp32 cells again on the CPU; `cpu-agreement` passes when each cell's
#                   top-1 is within the test set's noise of its CPU twin (99% binomial band)
#   process         `--executor process` on the GPU: one worker per visible GPU, its record
#                   names the GPU it saw, its top-1 equals the local run's
#   oom             a forward too large for the GPU: the batch that fits is found, remembered
#                   (a second call starts there) and recorded
#   oom-training    full fine-tuning at batch 128, two seeds, with the allocator capped at 3 GiB:
#                   the cells finish with micro-batches and gradient accumulation, record the
#                   effective batch 128, take the optimiser steps of an uncapped run, search the
#                   micro-batch once (the second seed starts there), and their top-1 is within the
#                   test set's noise of the uncapped run (CPU fallback: a simulated out-of-memory)
#   features-*      feature extraction vs timm's benchmark loop, per precision: passes at a
#                   ratio of at least $MIN_RATIO (0.8) on a GPU
#
#   benchmarks/gpu_check.sh [SUMMARY]       # default: $OUT/gpu_summary.md, else results/benchmarks/
#   DEVICE=cpu benchmarks/gpu_check.sh      # the CPU fallback: tiny sizes, proves the script runs
#
# Every step runs under its own time limit (multiplied by $TIME_SCALE, default 1, for a slow or
# busy machine); a failing step is recorded and the others still run. The exit code is the number
# of failed checks.
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
CHECKS=$WORK/checks.tsv
DETAILS=$WORK/details.md
: > "$CHECKS"; : > "$DETAILS"
START=$(date +%s)

if [ "$DEVICE" = cpu ]; then
    # The fallback only proves the script: tiny images, one epoch, fp32, three cells.
    PX=32; IMAGES=120; EPOCHS=1; MIN_RATIO=0
    CELLS=(linear-probe-fp32 lp-ft-fp32 lora-fp32)
    CPU_CELLS=(linear-probe-fp32)
    FEATURES_ARGS=(--px 32 --images 256 --repeats 1 --batches 64)
    PRECISIONS=(fp32)
else
    PX=224; IMAGES=1000; EPOCHS=3; MIN_RATIO=${MIN_RATIO:-0.8}
    CELLS=()                                            # all of them
    CPU_CELLS=(linear-probe-fp32 partial-unfreeze-fp32)  # the CPU twins (fine-tuning at 224 px
                                                         # on CPU would take the whole budget)
    FEATURES_ARGS=(--px 224 --images 2048 --repeats 3 --batches 64 256)
    PRECISIONS=(fp32 bf16 fp16)
fi

# check NAME pass|fail DETAIL: one line on stdout, one row of the summary's table.
check() {
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$CHECKS"
    printf '%s %s: %s\n' "$( [ "$2" = pass ] && echo PASS || echo FAIL )" "$1" "$3"
}

# step NAME SECONDS COMMAND...: run it, keep its output in the details; a check of its own.
step() {
    local name=$1 limit=$(( $2 * ${TIME_SCALE:-1} )); shift 2
    local log=$WORK/$name.log t0=$(date +%s) rc
    timeout "$limit" "$@" > "$log" 2>&1; rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then check "$name" pass "$took s"
    else check "$name" fail "exit $rc$( [ $rc -eq 124 ] && echo ', time limit'), $took s"; fi
    printf '\n### %s\n\n`%s`\n\n```\n' "$name" "$*" >> "$DETAILS"
    tail -n "${TAIL:-40}" "$log" >> "$DETAILS"
    printf '```\n' >> "$DETAILS"
    return $rc
}

if [ "$DEVICE" != cpu ]; then
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "no CUDA device visible to torch; run with DEVICE=cpu for the fallback"
        exit 1
    fi
    command -v nvidia-smi > /dev/null && TAIL=30 step nvidia-smi 30 nvidia-smi
fi
step environment 60 "$PY" -c '
import json, torch
from tlbench.engine.runtime import configure_runtime, gpu_info, resolve_precision
from tlbench.provenance import hardware
info = hardware()
info["torch"] = torch.__version__
info["settings"] = configure_runtime()
if torch.cuda.is_available():
    info.update(gpu_info(torch.device("cuda")))
    info["precision_auto"] = resolve_precision("auto", torch.device("cuda"))
print(json.dumps(info, indent=1, default=str))'

TAIL=25 step device-tests 180 env TLBENCH_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider -m device tests/

# -- the image folder and the suite -----------------------------------------------------------
step images 120 "$PY" - "$WORK/images" "$IMAGES" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

root, count = Path(sys.argv[1]), int(sys.argv[2])
digits = load_digits()
rng = np.random.default_rng(0)
per_class = max(4, count // 10)
for label in range(10):
    folder = root / f"class_{label}"
    folder.mkdir(parents=True, exist_ok=True)
    picks = np.flatnonzero(digits.target == label)
    for i in range(per_class):
        small = digits.images[picks[i % len(picks)]] / 16.0
        big = np.kron(small, np.ones((32, 32)))                          # 256 x 256
        tint = rng.uniform(0.3, 1.0, size=3)
        img = big[..., None] * tint + rng.normal(0, 0.08, (256, 256, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
print(f"{per_class * 10} JPEGs at 256 px in {root}")
PYEOF

cat > "$WORK/check.toml" <<EOF
name = "gpu-check"
seeds = [0]
[[models]]
name = "efficientnet_lite0.in1k"
id = "lite0"
input_size = $PX
[[datasets]]
name = "imagefolder"
id = "jpegs"
root = "$WORK/images"
EOF
for precision in fp32 bf16 fp16; do
    printf '[[strategies]]\nname = "linear-probe"\nid = "linear-probe-%s"\nprecision = "%s"\n' \
        "$precision" "$precision" >> "$WORK/check.toml"
done
for spec in partial-unfreeze:fp32 lp-ft:fp32 full-finetune:bf16 full-finetune:fp16 bitfit:fp32 lora:fp32; do
    printf '[[strategies]]\nname = "%s"\nid = "%s-%s"\nprecision = "%s"\nepochs = %s\naugment = true\n' \
        "${spec%%:*}" "${spec%%:*}" "${spec##*:}" "${spec##*:}" "$EPOCHS" >> "$WORK/check.toml"
done

select_cells() { for cell in "$@"; do printf -- '--strategy\n%s\n' "$cell"; done; }
mapfile -t DEVICE_SELECT < <(select_cells "${CELLS[@]}")
mapfile -t CPU_SELECT < <(select_cells "${CPU_CELLS[@]}")

TAIL=30 step grid 420 "$PY" -m tlbench run "$WORK/check.toml" --device "$DEVICE" \
    --out "$WORK/grid" --cache-dir "$TLBENCH_CACHE" -q "${DEVICE_SELECT[@]}"
TAIL=30 step grid-cpu 300 "$PY" -m tlbench run "$WORK/check.toml" --device cpu \
    --out "$WORK/grid-cpu" --cache-dir "$TLBENCH_CACHE" -q "${CPU_SELECT[@]}"

# Each device cell ok; each fp32 cell within the test set's noise of its CPU twin.
"$PY" - "$WORK/grid/cells.jsonl" "$WORK/grid-cpu/cells.jsonl" > "$WORK/agreement.tsv" <<'PYEOF'
import json, math, sys
from pathlib import Path

def records(path):
    p = Path(path)
    rows = [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []
    return {r["strategy"]: r for r in rows}

device, cpu = records(sys.argv[1]), records(sys.argv[2])
for name, r in sorted(device.items()):
    c, h = r.get("cost", {}), r.get("hparams", {})
    detail = (f"{r['status']}, top-1 {r.get('metrics', {}).get('top1')}, precision "
              f"{h.get('precision', c.get('precision'))}, batch {c.get('batch_size')}, "
              f"peak {c.get('peak_mem_mb')} MiB, {c.get('wall_s')} s")
    if r.get("error"):
        detail += f"; {r['error'].get('message', '')[:200]}"
    print(f"cell {name}\t{'pass' if r['status'] == 'ok' else 'fail'}\t{detail}")
for name, twin in sorted(cpu.items()):
    mine = device.get(name)
    if mine is None or mine["status"] != "ok" or twin["status"] != "ok":
        print(f"cpu-agreement {name}\tfail\tmissing or not ok on one side")
        continue
    a, b = mine["metrics"]["top1"], twin["metrics"]["top1"]
    n = (mine.get("split") or {}).get("sizes", {}).get("test") or 200
    p = max(min((a + b) / 200, 0.99), 0.01)
    band = max(1.0, 2.58 * math.sqrt(2 * p * (1 - p) / n) * 100)
    ok = abs(a - b) <= band
    print(f"cpu-agreement {name}\t{'pass' if ok else 'fail'}\t{a:.2f} on the device vs {b:.2f} on CPU, band +-{band:.2f} (n={n})")
if not device:
    print("cells\tfail\tno records from the device grid")
PYEOF
while IFS=$'\t' read -r name verdict detail; do check "$name" "$verdict" "$detail"; done < "$WORK/agreement.tsv"

# -- the process executor on the GPU -------------------------------------------------------------
if step process 300 "$PY" -m tlbench run "$WORK/check.toml" --device "$([ "$DEVICE" = cpu ] && echo cpu || echo auto)" \
        --executor process --out "$WORK/process" --cache-dir "$TLBENCH_CACHE" -q --strategy linear-probe-fp32; then
    "$PY" - "$WORK/process/cells.jsonl" "$WORK/grid/cells.jsonl" "$DEVICE" > "$WORK/process.tsv" <<'PYEOF'
import json, sys
from pathlib import Path
read = lambda p: {json.loads(l)["strategy"]: json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()}
proc, local = read(sys.argv[1]), read(sys.argv[2])
r = proc["linear-probe-fp32"]
worker = r.get("worker", {})
gpu = worker.get("cuda_visible_devices")
same = local.get("linear-probe-fp32", {}).get("metrics", {}).get("top1") == r["metrics"]["top1"]
ok = r["status"] == "ok" and (gpu is not None or sys.argv[3] == "cpu")
print(f"process-gpu\t{'pass' if ok else 'fail'}\tworker pid {worker.get('pid')} saw CUDA_VISIBLE_DEVICES={gpu}, device {r.get('cost', {}).get('device')}")
print(f"process-same-top1\t{'pass' if same else 'fail'}\t{r['metrics']['top1']} in the worker, {local.get('linear-probe-fp32', {}).get('metrics', {}).get('top1')} in the local run")
PYEOF
    while IFS=$'\t' read -r name verdict detail; do check "$name" "$verdict" "$detail"; done < "$WORK/process.tsv"
fi

# -- out of memory: the batch that fits is found once and remembered ------------------------------
step oom 180 "$PY" - "$DEVICE" "$PX" <<'PYEOF'
import sys
import timm, torch
from tlbench.engine.runtime import configure_runtime, with_oom_retry

device, px = torch.device(sys.argv[1]), int(sys.argv[2])
configure_runtime()
model = timm.create_model("efficientnet_lite0", num_classes=0).eval().to(device)
tries = []
if device.type == "cuda":
    free, _ = torch.cuda.mem_get_info(device)
    start = 1 << int(free // (3 * px * px * 4 * 4)).bit_length()   # the input alone ~1/4 of free
    def forward(batch):
        tries.append(batch)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(torch.randn(batch, 3, px, px, device=device)).shape[0]
else:  # the fallback simulates the GPU running out of memory above 16 images
    start = 256
    def forward(batch):
        tries.append(batch)
        if batch > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        with torch.no_grad():
            return model(torch.randn(batch, 3, px, px)).shape[0]
key = ("efficientnet_lite0", px, str(device))
_, fitted = with_oom_retry(forward, start, key=key)
first = list(tries)
tries.clear()
_, again = with_oom_retry(forward, start, key=key)
print(f"asked {start}, tried {first}, fits {fitted}; second call tried {tries}")
assert fitted < start and len(first) > 1, "no out-of-memory was met"
assert tries == [fitted] and again == fitted, "the fitted batch was not remembered"
PYEOF

# -- out of memory in training: micro-batches and accumulation keep the recipe ---------------------
cat > "$WORK/oom.toml" <<EOF
name = "gpu-check-oom"
seeds = [0, 1]
[[models]]
name = "efficientnet_lite0.in1k"
id = "lite0"
input_size = $PX
[[datasets]]
name = "imagefolder"
id = "jpegs"
root = "$WORK/images"
[[strategies]]
name = "full-finetune"
id = "full-finetune-b128"
precision = "fp32"
epochs = 1
batch_size = 128
finetune_lr = [0.001]
EOF
TAIL=20 step oom-training 420 "$PY" - "$DEVICE" "$WORK" <<'PYEOF'
import json, logging, math, sys
from pathlib import Path
import torch
from tlbench.cli import cli
import tlbench.engine.training as training

device, work = sys.argv[1], Path(sys.argv[2])
steps, restarts = [], []
real_optimizer = training._optimizer
def counting(model, cfg):  # optimiser steps per candidate
    opt = real_optimizer(model, cfg)
    steps.append(0)
    slot = len(steps) - 1
    opt.register_step_post_hook(lambda *_: steps.__setitem__(slot, steps[slot] + 1))
    return opt
training._optimizer = counting
class Restarts(logging.Handler):
    def emit(self, record):
        if "out of memory at micro-batch" in record.getMessage():
            restarts.append(record.getMessage())
logging.getLogger("tlbench.training").addHandler(Restarts())
logging.getLogger("tlbench.training").setLevel(logging.INFO)

def run(name):
    cli(["run", str(work / "oom.toml"), "--device", device, "--out", str(work / name),
         "--cache-dir", str(work / "cache"), "-q"], prog_name="tlbench", standalone_mode=False)
    rows = [json.loads(l) for l in (work / name / "cells.jsonl").read_text().splitlines() if l.strip()]
    return sorted(rows, key=lambda r: r["seed"])

plain = run("oom-plain")
plain_steps = [s for s in steps if s]
steps.clear()
if device == "cpu":  # no allocator to cap: the model's forward fails above 16 training images
    real_forward = training._ImageFeeder.forward
    def forward(self, x):
        if torch.is_grad_enabled() and len(x) > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, x)
    training._ImageFeeder.forward = forward
else:
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((3 << 30) / total, 0)
capped = run("oom-capped")
capped_steps = [s for s in steps if s]
for p, c in zip(plain, capped):
    pc, cc = p.get("cost", {}), c.get("cost", {})
    print(f"seed {c['seed']}: {c['status']}, top-1 {c.get('metrics', {}).get('top1')} capped vs "
          f"{p.get('metrics', {}).get('top1')} uncapped; batch {cc.get('batch_size')}, micro "
          f"{cc.get('micro_batch_size')}, accumulation {cc.get('accumulation_steps')}, peak "
          f"{cc.get('peak_mem_mb')} MiB (uncapped {pc.get('peak_mem_mb')})")
print(f"optimiser steps per candidate: capped {capped_steps}, uncapped {plain_steps}")
print(f"restarts: {restarts}")
assert len(plain) == len(capped) == 2, "a cell is missing"
assert all(r["status"] == "ok" for r in plain + capped), "a cell did not finish"
assert all(r["cost"]["batch_size"] == 128 for r in capped), "the recorded batch is not the effective one"
micro = {r["cost"].get("micro_batch_size") for r in capped}
assert len(micro) == 1 and None not in micro and min(micro) < 128, "no micro-batches recorded"
assert capped_steps == plain_steps, "the number of optimiser steps changed"
assert len(restarts) == int(math.log2(128 // min(micro))), "the micro-batch was searched more than once"
for p, c in zip(plain, capped):
    a, b = c["metrics"]["top1"], p["metrics"]["top1"]
    n = (c.get("split") or {}).get("sizes", {}).get("test") or 200
    q = max(min((a + b) / 200, 0.99), 0.01)
    band = max(1.0, 2.58 * math.sqrt(2 * q * (1 - q) / n) * 100)
    assert abs(a - b) <= band, f"top-1 {a} capped vs {b} uncapped, outside +-{band:.2f}"
PYEOF

# -- feature extraction against timm's benchmark loop ---------------------------------------------
for precision in "${PRECISIONS[@]}"; do
    if TAIL=15 step "features-$precision" 240 "$PY" benchmarks/bench_features.py --device "$DEVICE" \
            --dataset digits --precision "$precision" "${FEATURES_ARGS[@]}"; then
        # The last line of the benchmark log is this run's: its smallest ratio must reach MIN_RATIO.
        verdict=$(tail -n 1 "$TLBENCH_BENCH_LOG" | "$PY" -c '
import json, sys
line = json.loads(sys.stdin.read())
ratios = [v["ratio"] for v in line["results"].values()]
worst = min(ratios)
print(("pass" if worst >= float(sys.argv[1]) else "fail") + f"\ttlbench/timm {worst:.3f} at worst (at least {sys.argv[1]})")' "$MIN_RATIO")
        check "features-$precision-ratio" "${verdict%%$'\t'*}" "${verdict#*$'\t'}"
    fi
done

# -- the summary: the checks first, then what each step printed ------------------------------------
FAILED=$(grep -c $'\tfail\t' "$CHECKS")
TOTAL=$(wc -l < "$CHECKS")
{
    echo "# tlbench GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
    echo "- device asked: $DEVICE; images: $IMAGES JPEGs read at $PX px; epochs: $EPOCHS"
    echo "- load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
    echo "- total: $(( $(date +%s) - START )) s; $((TOTAL - FAILED)) of $TOTAL checks passed"
    echo
    echo "| check | result | detail |"
    echo "|---|---|---|"
    while IFS=$'\t' read -r name verdict detail; do
        echo "| $name | $( [ "$verdict" = pass ] && echo PASS || echo '**FAIL**' ) | ${detail//|//} |"
    done < "$CHECKS"
    echo
    echo "## Details"
    cat "$DETAILS"
} > "$SUMMARY"
echo "summary: $SUMMARY ($FAILED of $TOTAL checks failed)"
rm -rf "$WORK"
exit "$FAILED"
