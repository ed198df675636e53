#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go, most important first (about 15 minutes on an H200,
# estimated; on 2026-11-30: the CUDA tests 95 s while the dataset was generated alongside in 117 s,
# then speed_cudagraphs 103 s, eval_precision 51 s, speed_none 86 s, speed_cudagraphs_nocache at
# 2 epochs 122 s; speed_default did not finish in the 121 s left):
#   1. the CUDA tests (tests/test_cuda.py and the metrics' and accumulator's CUDA tests);
#   2. the dataset-scale benchmark (benchmarks/train_speed.py, 3 epochs on the MVTec-AD-sized
#      synthetic set, generated once into $SPEED_DATA and reused): CUDA graphs with the image cache
#      on the device first, then no compilation, the default compile mode, and CUDA graphs without
#      the image cache. Its JSON lines are appended, with the step, command and date, to $RESULTS
#      and to $OUT/train_speed.jsonl; the CUDA-graph run's record is copied to $OUT;
#   3. evaluation precision (benchmarks/eval_precision.py) on that CUDA-graph run's checkpoint and
#      the MVTec-AD-sized test set: eval_precision fp32 and bf16, the time of each and the largest
#      metric difference;
#   4. benchmarks/throughput.py: ViT-S at 256 px, batch 8 and 64, decoder depth 4 (default) and 2,
#      and compiled; benchmarks/metrics_speed.py on the GPU;
#   5. real runs on the small synthetic data at 256 px (`agpnet run`, 30 epochs, multi-class):
#      plain, compiled, and compiled with CUDA graphs;
#   6. packing (needs Ray: pip install -e '.[ray]'): 4 identical short training cells of a sweep on
#      one GPU under the Ray executor, at --gpus-per-cell 1 and 0.25; the aggregate img/s ratio
#      (benchmarks/sweep_scaling.py --packing; about 3 minutes; alone: STEPS=packing).
# Each step has its own time limit and the script goes on when one fails; it exits 1 if any
# failed. Everything is logged to $OUT/gpu_check.log (OUT defaults to gpu_check/; earlier
# results there are removed first); the runs' records are copied there. All runs use random
# encoder weights (speed does not depend on them; `weights: hub` needs the internet).
#
#   PY=.venv/bin/python bash benchmarks/gpu_check.sh
#   STEPS="synth run_compiled" bash benchmarks/gpu_check.sh     # only these steps
# Where one command may run 10 minutes at most, run it in three parts (different OUT folders;
# $SPEED_DATA stays between them):
#   OUT=gpu_check/speed BUDGET=570 STEPS="environment tests synth_mvtec speed_cudagraphs \
#       eval_precision speed_none" bash benchmarks/gpu_check.sh
#   OUT=gpu_check/modes BUDGET=570 STEPS="speed_default speed_cudagraphs_nocache" bash benchmarks/gpu_check.sh
#   OUT=gpu_check/rest BUDGET=570 STEPS="throughput_b8 metrics_speed synth run run_compiled \
#       run_cudagraphs throughput_b64 throughput_b8_compiled throughput_b8_cudagraphs" bash benchmarks/gpu_check.sh
# and, where time is left, STEPS="throughput_b8_depth2 throughput_b64_depth2 throughput_b64_compiled packing".
set -u
OUT=${OUT:-gpu_check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a smoke test of the script itself on a machine without a GPU
BUDGET=${BUDGET:-1800}  # seconds for the whole script; a step never runs past it
SPEED_DATA=${SPEED_DATA:-data/mvtec_scale}  # kept between calls: generating it takes minutes
SPEED_ARGS=${SPEED_ARGS:-}  # more train_speed.py flags for every speed step, e.g. "--epochs 1 --image-size 64"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | awk '{print tolower($NF)}')
RESULTS=${RESULTS:-benchmarks/results/$(date +%F)_${GPU_NAME:-gpu}.jsonl}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/gpu_check.log
FAILED=()
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
rm -f "$LOG" "$OUT"/record*.json "$OUT/throughput.jsonl" "$OUT/train_speed.jsonl" "$OUT/packing.jsonl"

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    rm -f "$WORK/step.log"
    if [[ -n ${STEPS:-} && " $STEPS " != *" $name "* ]]; then return; fi
    local left=$((BUDGET - SECONDS - 5))
    if ((left < 10)); then echo "== $name: skipped, out of time" | tee -a "$LOG"; FAILED+=("$name"); return; fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >"$WORK/step.log" 2>&1
    rc=$?
    cat "$WORK/step.log" >>"$LOG"
    tail -n 10 "$WORK/step.log"
    echo "-- $name: exit $rc after $((SECONDS - started)) s" | tee -a "$LOG"
    ((rc == 0)) || FAILED+=("$name")
}

speed() {  # speed NAME LIMIT ARGS...: train_speed.py on $SPEED_DATA; its JSON line to $RESULTS and $OUT
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$PY" benchmarks/train_speed.py --device $DEVICE --root "$SPEED_DATA" $SPEED_ARGS "$@"
    local line
    line=$(grep -h '^{"images"' "$WORK/step.log" 2>/dev/null | tail -n 1)
    [[ -n $line ]] || return 0
    LINE=$line STEP=$name COMMAND="python3 benchmarks/train_speed.py --device $DEVICE --root $SPEED_DATA $SPEED_ARGS $*" \
        "$PY" -c 'import datetime, json, os
print(json.dumps({"step": os.environ["STEP"], "command": os.environ["COMMAND"], **json.loads(os.environ["LINE"]),
                  "date": datetime.date.today().isoformat()}))' | tee -a "$OUT/train_speed.jsonl" >>"$RESULTS"
}

copy_record() { [[ ! -f $1 ]] || cp "$1" "$OUT/$2"; }

step environment 30 bash -c "nvidia-smi -L; $PY -c 'import sys, torch, timm, numpy, sklearn; \
print(sys.version.split()[0], torch.__version__, torch.version.cuda, timm.__version__, numpy.__version__, sklearn.__version__)'"
step tests 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_metrics.py \
    tests/test_accumulator.py -k cuda --durations=10
step synth_mvtec 300 bash -c "grep -qs 'scale=mvtec, fraction=1.0' '$SPEED_DATA/README.md' \
    || '$PY' -m agpnet synth --out '$SPEED_DATA' --scale mvtec --seed 0"
speed speed_cudagraphs 240 --compile-mode reduce-overhead --image-cache device --out "$WORK/speed"
copy_record "$WORK/speed/run_reduce-overhead/record.json" record_speed_cudagraphs.json
step eval_precision 180 "$PY" benchmarks/eval_precision.py --device $DEVICE \
    --checkpoint "$WORK/speed/run_reduce-overhead/checkpoint.pt" --root "$SPEED_DATA"
speed speed_none 180 --compile-mode none --image-cache device
speed speed_default 240 --compile-mode default --image-cache device
speed speed_cudagraphs_nocache 240 --compile-mode reduce-overhead --image-cache off
step throughput_b8 60 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 8 --iters 20 --repeat 5
step metrics_speed 90 "$PY" benchmarks/metrics_speed.py --device $DEVICE
step synth 60 "$PY" -m agpnet synth --out "$WORK/synth" --seed 0
step run 150 "$PY" -m agpnet run --dataset mvtec --root "$WORK/synth" --setting multi-class --epochs 30 \
    --device $DEVICE --weights random --compile false --out "$WORK/run"
copy_record "$WORK/run/record.json" record.json
step run_compiled 240 "$PY" -m agpnet run --dataset mvtec --root "$WORK/synth" --setting multi-class --epochs 30 \
    --device $DEVICE --weights random --compile true --compile-mode default --out "$WORK/run_compiled"
copy_record "$WORK/run_compiled/record.json" record_compiled.json
step run_cudagraphs 240 "$PY" -m agpnet run --dataset mvtec --root "$WORK/synth" --setting multi-class --epochs 30 \
    --device $DEVICE --weights random --compile true --compile-mode reduce-overhead --out "$WORK/run_cudagraphs"
copy_record "$WORK/run_cudagraphs/record.json" record_cudagraphs.json
step throughput_b64 60 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 64 --iters 10 --repeat 5
step throughput_b8_depth2 60 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 8 --iters 20 --repeat 5 --decoder-depth 2
step throughput_b64_depth2 60 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 64 --iters 10 --repeat 5 --decoder-depth 2
step throughput_b64_compiled 180 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 64 --iters 10 --repeat 5 --compile
step throughput_b8_compiled 180 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 8 --iters 20 --repeat 5 --compile
step throughput_b8_cudagraphs 180 "$PY" benchmarks/throughput.py --device $DEVICE --batch-size 8 --iters 20 --repeat 5 \
    --compile reduce-overhead
step packing 300 "$PY" benchmarks/sweep_scaling.py --packing --cells 4 --epochs 10
grep -h '^{"encoder_img_s"' "$LOG" >"$OUT/throughput.jsonl" || rm -f "$OUT/throughput.jsonl"
grep -h '^{"packed_img_s"' "$LOG" >"$OUT/packing.jsonl" || rm -f "$OUT/packing.jsonl"
if ((${#FAILED[@]})); then echo "failed: ${FAILED[*]}" | tee -a "$LOG"; exit 1; fi
echo "all steps passed" | tee -a "$LOG"
