#!/usr/bin/env bash
# The GPU checks of the deployment path and of what training on nuScenes costs, on one CUDA machine,
# run from the repository root. Every table, log and JSON goes under $OUT; a summary is printed last.
#
#   OUT=outputs/cuda_check bash benchmarks/cuda_check.sh     # one H200: about 4 minutes, at most 4.5
#   SMOKE=1 bash benchmarks/cuda_check.sh                    # tiny sizes and runs: the same steps on a CPU
#
# Steps, each under its own `timeout` (on CUDA the limits add up to 265 s):
#   1. env: GPU, torch, transformers, onnxruntime versions                            (ENV_LIMIT)
#   2. speed: `benchmark.py speed --device cuda`: student-fast and DA-V2 Small in fp32, bf16, fp16
#      (network only, with resize in/out), then the device pipeline stage by stage (pipeline.py,
#      CUDA graphs) with DA-V2 Small at its best precision and the ratios  (SPEED_LIMIT)
#   3. traincost: `benchmark.py traincost`: the whole training step on photo-like nuScenes-format
#      JPEGs, DA-V2 Small live (fp32 as train.py, and bf16) and through the compact cache (TRAIN_LIMIT)
# No step needs nuscenes-devkit: the training-cost loader indexes the JSON tables itself.
# PYTHON picks the interpreter (default python3).
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-./outputs/cuda_check}
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
ENV_LIMIT=20
SPEED_LIMIT=100
TRAIN_LIMIT=145
mkdir -p "$OUT"
: > "$OUT/summary.txt"

if [ "$SMOKE" = 1 ]; then  # a shared 2-core CPU: wider limits, so that each step finishes and says what it took
    ENV_LIMIT=60
    SPEED_LIMIT=600
    TRAIN_LIMIT=600
    SPEED_FLAGS=(--image-size 64 96 --native-size 90 160 --runs 1 --warmup 1 --precisions fp32
                 --stage-runs 2 --stage-precisions fp32 bf16)
    TRAIN_FLAGS=(--image-size 64 96 --batch-size 2 --steps 1 --warmup 0 --workers 0 --images flat
                 --teacher-long-side 56)
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: no CUDA device seen by $PY; run on the GPU machine, or SMOKE=1 for the CPU smoke run" >&2
        exit 2
    fi
    SPEED_FLAGS=(--device cuda --runs 10 --warmup 3 --precisions fp32 bf16 fp16
                 --stage-runs 20 --stage-precisions fp32 bf16 fp16)
    TRAIN_FLAGS=(--device cuda --batch-size 8 --steps 20 --warmup 3)
fi

run_step() {  # run_step NAME LIMIT CMD...: CMD under `timeout LIMIT`, its output in $OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=$?
    echo "$name: exit $rc after $(($(date +%s) - start)) s (limit $limit s)" \
        >> "$OUT/summary.txt"
}

run_step env "$ENV_LIMIT" "$PY" -c "
import torch, transformers, onnxruntime
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      'onnxruntime', onnxruntime.__version__)
import os
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'cores', os.cpu_count())"
run_step speed "$SPEED_LIMIT" "$PY" benchmark.py speed --models student-fast da-v2-small --train-runs 0 \
    "${SPEED_FLAGS[@]}" --json "$OUT/speed.json"
run_step traincost "$TRAIN_LIMIT" "$PY" benchmark.py traincost --teacher-mode live cache \
    --teacher-precision fp32 bf16 "${TRAIN_FLAGS[@]}" --json "$OUT/traincost.json"

{
    echo
    echo "== summary ($OUT) =="
    cat "$OUT/summary.txt"
    STAGE_LINES="^\| (student|da-v2-small) \| [a-z0-9]+ \| (yes|no)|each at its best|both fp32 without"
    STAGE_LINES="$STAGE_LINES|pipeline \(bf16\)"
    grep -h -E "$STAGE_LINES" "$OUT/speed.log" || echo "speed: no stage table (see $OUT/speed.log)"
    grep -h -E "^\| (live|cache) \|" "$OUT/traincost.log" || echo "traincost: no table (see $OUT/traincost.log)"
    ls "$OUT"
} | tee "$OUT/summary.md"
! grep -q -v "exit 0 " "$OUT/summary.txt"
