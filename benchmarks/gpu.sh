#!/usr/bin/env bash
# The key benchmarks at GPU sizes, on one GPU, in under 8 minutes.
#
#     bash benchmarks/gpu.sh            # writes benchmarks/results/gpu/
#     bash benchmarks/gpu.sh --dry-run  # checks the plan, runs nothing
#
# Each step has its own time limit (seconds, below), so the whole script
# stays within its budget even when one step runs long; a step that times
# out or fails is named in benchmarks/results/gpu/gpu_run.log and the
# script goes on. Every record names its command, load and device.
#
#   1. model_overhead: GPT-2 small (12 x 768, 512-token segments, random
#      weights), training step and cached generation (2,048-token prompt,
#      256 new tokens) with the memory in every layer vs without, on JAX,
#      torch and TensorFlow, plus one tiny family;
#   2. overheads: InfFormerBlock with vs without the LTM, sticky writes
#      (the paper's sorting configuration);
#   3. ltm_speed: ContinuousLTM against the authors' algorithm (torch);
#   4. context_scaling: two blocks streaming to 1M tokens vs full
#      attention (JAX).
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT=benchmarks/results/gpu
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

# Step budgets, seconds: 200 + 100 + 60 + 100 = 460 s < 8 min.
MODEL_S=200
OVERHEADS_S=100
LTM_S=60
SCALING_S=100

export BENCHMARK_RESULTS="$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX: allocate as needed
export TF_FORCE_GPU_ALLOW_GROWTH=true        # TensorFlow: the same
export TF_CPP_MIN_LOG_LEVEL=3

steps=(
  "$MODEL_S benchmarks/model_overhead.py --size full --families llama3 --repeats 4"
  "$OVERHEADS_S benchmarks/overheads.py --repeats 5"
  "$LTM_S benchmarks/ltm_speed.py --repeats 10"
  "$SCALING_S benchmarks/context_scaling.py --repeats 3 --time-cap 60 --memory-cap-gib 60"
)

if [ "$DRY" = 1 ]; then
  total=0
  for step in "${steps[@]}"; do
    read -r limit command <<<"$step"
    total=$((total + limit))
    echo "[${limit}s] $PYTHON $command"
  done
  echo "total budget ${total}s"
  [ "$total" -lt 480 ] || { echo "over 8 minutes" >&2; exit 1; }
  # The model benchmark checks its full-size plan without building it.
  exec "$PYTHON" benchmarks/model_overhead.py --size full --families llama3 \
    --dry-run
fi

mkdir -p "$OUT"
log="$OUT/gpu_run.log"
{
  echo "# benchmarks/gpu.sh, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 || true
} >"$log"
for step in "${steps[@]}"; do
  read -r limit command <<<"$step"
  start=$(date +%s)
  timeout "$limit" "$PYTHON" $command >"$OUT/$(basename "${command%% *}" .py).out" 2>&1
  rc=$?
  echo "rc=$rc $(( $(date +%s) - start ))s $command" >>"$log"
done
cat "$log"
