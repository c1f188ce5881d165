#!/usr/bin/env bash
# One call on a lent CUDA machine: build fastblocks._C with its CUDA kernels, run the GPU parity
# tests and the memory checker, then the benchmarks; logs and result files land under $OUT.
#
#   bash bench/gpu_session.sh [STAGE ...]     stages, in the order given (default: all of them)
#     build      pip install -e . (CPU + CUDA kernels; nothing is fetched: --no-deps)
#     test       pytest -m cuda (parity with eager on the GPU, fp32/fp16/bf16, every backend)
#     sanitize   compute-sanitizer memcheck over the depthwise and activation CUDA tests
#     quick      fastblocks bench ops --op all --quick (every op, both fastblocks GPU backends)
#     depthwise  every depthwise layer of the three networks at batch 32 and 256, bf16 and fp32,
#                channels_last and NCHW, fwd and fwd+bwd, vs eager and torch.compile
#
#   OUT       where logs and results go (default /tmp/fastblocks-gpu); results are written as
#             $OUT/results/<device>/<name>.json + .png, to be copied to bench/results/
#   PYTHON    the interpreter that holds PyTorch (default python3)
#   STAGE_TIMEOUT  seconds per stage before it is cut short (default 540: a device call may
#             run 600 s); a cut-short benchmark keeps the rows it finished
#
# The machine keeps nothing between leases: run `build` in the same call as, or in a call just
# before, the stages that need it (the device tool keeps ignored build outputs while warm).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/fastblocks-gpu}
PY=${PYTHON:-python3}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-540}
mkdir -p "$OUT/results"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

run_stage() {  # name, command...: runs under the stage timeout, logs to $OUT/<name>.log
  local name=$1
  shift
  local t0=$SECONDS
  echo "=== $name: $*"
  timeout "$STAGE_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "$name: exit $rc in $((SECONDS - t0)) s (log: $OUT/$name.log)"
  tail -n 25 "$OUT/$name.log"
  return $rc
}

BENCH=("$PY" -m fastblocks.cli bench ops --no-progress --out "$OUT/results")
DW=(--op depthwise_conv2d --shapes all --layout channels_last --layout nchw --mode fwd --mode fwd+bwd
    --providers eager,compile,triton,cuda,auto)

stage_build() {
  run_stage build env MAX_JOBS=16 "$PY" -m pip install -e . --no-build-isolation --no-deps \
    --disable-pip-version-check -q && run_stage info "$PY" -m fastblocks.cli info
}
stage_test() { run_stage test "$PY" -m pytest -q -m cuda -p no:cacheprovider; }
stage_sanitize() {
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_stage sanitize compute-sanitizer --tool memcheck \
    --error-exitcode 3 "$PY" -m pytest -q -m cuda -p no:cacheprovider -k "fuzz_cuda or parity_cuda or real_layer_shapes_cuda"
}
stage_quick() { run_stage quick "${BENCH[@]}" --op all --quick --name ops-all-quick; }
stage_depthwise() {
  run_stage depthwise-b32 "${BENCH[@]}" "${DW[@]}" --batch 32 --dtype bfloat16 --dtype float32 \
    --name depthwise-batch32
  run_stage depthwise-b256 "${BENCH[@]}" "${DW[@]}" --batch 256 --dtype bfloat16 --name depthwise-batch256-bf16
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  2>&1 | tee -a "$OUT/gpu.txt"

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(build test sanitize quick depthwise)
status=0
for s in "${STAGES[@]}"; do
  if ! declare -F "stage_$s" > /dev/null; then
    note "unknown stage '$s' (build, test, sanitize, quick, depthwise)"
    status=2
    continue
  fi
  "stage_$s" || status=1
  if [ "$s" = build ] && [ $status -ne 0 ]; then
    note "build failed: the other stages need it"
    break
  fi
done
echo
echo "=== summary"
cat "$SUMMARY"
exit $status
