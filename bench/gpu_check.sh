#!/usr/bin/env bash
# Every GPU check in one run (under 8 minutes on one H100-class GPU), figures in one summary file.
#
#   bench/gpu_check.sh [--cpu-smoke] [--out DIR]
#
# Steps: the suite's CUDA-marked tests; a whole job through the embedded service on 50,000 synthetic
# 32x32x3 images with resnet18_cifar (each stage's seconds); bench/ruc_epoch.py at N = 50,000;
# bench/kmeans.py with ours on the GPU against scikit-learn on the CPU (50,000 x 512, K = 100);
# bench/preflight.py, the memory preflight capped below what refine.batch_size 2,048 needs
# (resnet18_cifar, 32x32): estimated vs measured peak and the batch it shrinks to.
# --cpu-smoke runs the same steps on the CPU at small sizes (CI runs it so the script never rots).
# Writes DIR/summary.json (the benchmarks' figures plus each step's seconds) and DIR/<step>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=gpu
out=bench-out
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) mode=cpu-smoke ;;
        --out) out="$2"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
PY=${PY:-.venv/bin/python}
mkdir -p "$out"
summary="$(cd "$out" && pwd)/summary.json"
rm -f "$summary"

if [ "$mode" = gpu ]; then
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --cpu-smoke")'
    job_args=(--n 50000 --backbone resnet18_cifar --epochs 2 --attack-samples 1000)
    epoch_args=(--n 50000 --batch 200 --device cuda --variants fp32,bf16)
    kmeans_args=(--n 50000 --d 512 --k 100 --device cuda --no-faiss)
    preflight_args=(--device cuda --n 10000 --side 32 --backbone resnet18_cifar --batch 2048)
else
    # One intra-op thread per process: the API, two workers and this script share the CPU.
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    job_args=(--n 300 --backbone small_cnn --epochs 1 --fit-epochs 3 --attack-samples 100)
    epoch_args=(--n 200 --batch 50 --device cpu --backbone small_cnn --variants fp32 --variant-steps 1)
    kmeans_args=(--n 2000 --d 32 --k 10 --restarts 1 --iters 10 --threads 1 --no-faiss)
    preflight_args=(--device cpu --n 400 --side 16 --backbone small_cnn --batch 128)
fi

declare -A seconds
step() {
    local name="$1"; shift
    local started=$SECONDS
    echo "== $name: $*"
    if ! "$@" > "$out/$name.log" 2>&1; then
        tail -n 40 "$out/$name.log" >&2
        echo "== $name FAILED (log: $out/$name.log)" >&2
        exit 1
    fi
    tail -n 12 "$out/$name.log"
    seconds[$name]=$((SECONDS - started))
}

# On a machine without CUDA these tests skip: the step still proves they collect and import.
step cuda_tests "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/core
step service_job "$PY" bench/service_job.py "${job_args[@]}" --summary "$summary"
step ruc_epoch "$PY" bench/ruc_epoch.py "${epoch_args[@]}" --summary "$summary"
step kmeans "$PY" bench/kmeans.py "${kmeans_args[@]}" --summary "$summary"
step preflight "$PY" bench/preflight.py "${preflight_args[@]}" --summary "$summary"

steps_json="{"
for name in "${!seconds[@]}"; do steps_json+="\"$name\": ${seconds[$name]},"; done
steps_json="${steps_json%,}}"
"$PY" - "$summary" "$mode" "$steps_json" <<'PYEOF'
import json, sys
path, mode, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = json.load(open(path))
data["check"] = {"mode": mode, "steps_s": steps, "total_s": sum(steps.values())}
json.dump(data, open(path, "w"), indent=2, sort_keys=True)
print(json.dumps(data["check"]))
PYEOF
echo "summary: $summary"
