#!/usr/bin/env bash
# One command on a lent CUDA machine, at most 9 minutes: build fastblocks._C with its CUDA
# kernels, run every GPU test, compute-sanitizer memcheck and racecheck, a quick benchmark of
# every op family, and the model zoo's inference benchmark; every log and result lands under
# $OUT and is then copied into bench/results/<device>/, whatever passed or failed.
#
#   bash bench/gpu_session.sh [--dry-run] [STAGE ...]
#
# Stages (default: the first six, in this order) and their budgets in seconds (each stage is
# cut at its budget by `timeout`; the six add up to 530, leaving 10 s of the 540 for the
# nvidia-smi probe, the archive and the copy):
#   build      170  pip install -e . with MAX_JOBS = all cores (CPU + CUDA kernels; --no-deps)
#   test        90  pytest -m "cuda and not gpu_models": parity with eager on the GPU, every
#                   backend and dtype
#                   (junit XML kept: bench/where_ran.py reads which tests passed)
#   memcheck    45  compute-sanitizer --tool memcheck over bench/gpu_sanitize_cases.py
#   racecheck   45  compute-sanitizer --tool racecheck over the same multi-tile cases
#   quick      120  fastblocks bench ops --op all --quick (every op family, every backend);
#                   the Triton kernels are autotuned here (see stage_quick), and what was
#                   chosen per kernel and key lands in gpu-session/autotune-quick.json
#   models      60  fastblocks bench models: MobileNetV2, MobileNetV3-Large, EfficientNet-B0
#                   and ShuffleNetV2 x1.0 inference at batch 256, bf16, channels_last, eager
#                   vs fastblocks (no compile: four models' compiles alone would pass 60 s)
#   sweeps     540  optional, never in the default list, a second call on its own: every
#                   depthwise layer at batch 32 (bf16, fp32) and 256 (bf16), both layouts,
#                   fwd and fwd+bwd, vs eager and torch.compile
#   models_full 540 optional, a call of its own like sweeps: the issue-13 table. The four
#                   models at batch 256 bf16 channels_last inference with every provider
#                   (eager, compile, fastblocks, fastblocks+compile), then an AMP training step
#                   (eager, fastblocks: time and peak memory), then batch-1 latency (CUDA graphs)
#   thirdparty 240  optional, a call of its own: pytest -m gpu_models, optimize() on torchvision's
#                   and timm's own models (tests/test_optimize_gpu_models.py; the GPU image has
#                   both libraries): whole-model parity in fp32 train/eval and bf16
#                   channels_last eval, then revert
#
# --dry-run   no GPU needed: every stage prints what it would run and is skipped (the models
#             probe and the result/archive/copy plumbing still run); exit 0. Without
#             --dry-run and without a CUDA GPU the script stops with exit 3.
#
# Environment:
#   OUT           where logs and results go (default: a new folder under /tmp)
#   PYTHON        the interpreter that holds PyTorch (default python3)
#   RESULTS_ROOT  where $OUT's results are copied (default bench/results; in a dry run
#                 $OUT/copied, so a dry run never writes into the checkout unless asked)
#   MODELS_ARGS   arguments of `fastblocks bench models` (default below)
#   GPU_PYTEST_WORKERS  pytest-xdist workers of the test and thirdparty stages (default 4)
#   FASTBLOCKS_AUTOTUNE  set to "prior" here for every stage but quick and sweeps: the tests,
#                 the sanitizers and the models run the kernels' prior configs (tuning each
#                 test's shapes would spend those stages' budgets on compiles); quick and sweeps
#                 tune (kernels/_autotune.py) and log each choice to gpu-session/autotune-*.jsonl
#
# Output: $OUT/results/<device-slug>/ holds the benchmark JSON/PNG files and gpu-session/
# (session.json: stage, budget, exit status, seconds; summary.txt; logs/<stage>.log;
# cuda-tests.xml). $OUT/session.tar.gz holds <device-slug>/ again, for the lent machine of
# /work/.library/device, which returns at most 8 files two folders deep: after such a call,
#   tar -xzf <files_at>/session.tar.gz -C bench/results && git add bench/results
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
STAGES=()
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) STAGES+=("$arg") ;;
  esac
done
DEFAULT_STAGES=(build test memcheck racecheck quick models)
[ ${#STAGES[@]} -eq 0 ] && STAGES=("${DEFAULT_STAGES[@]}")
declare -A BUDGET=([build]=170 [test]=90 [memcheck]=45 [racecheck]=45 [quick]=120 [models]=60
                   [sweeps]=540 [models_full]=540 [thirdparty]=240)
SESSION_BUDGET=540

OUT=${OUT:-$(mktemp -d /tmp/fastblocks-gpu.XXXXXX)}
PY=${PYTHON:-python3}
ZOO4=mobilenet_v2,mobilenet_v3_large,efficientnet_b0,shufflenet_v2_x1_0
MODELS_ARGS=${MODELS_ARGS:-"--model $ZOO4 --batch 256 --dtype bfloat16 --channels-last --quick --providers eager,fastblocks"}
mkdir -p "$OUT"
t_start=$SECONDS
export FASTBLOCKS_AUTOTUNE=prior

for s in "${STAGES[@]}"; do
  if [ -z "${BUDGET[$s]:-}" ]; then
    echo "unknown stage '$s' (known: ${DEFAULT_STAGES[*]} sweeps models_full thirdparty)" >&2
    exit 2
  fi
done

# One interpreter start for the GPU check, the device slug and the versions (each start
# imports torch: seconds on a small machine).
probe=$("$PY" - <<'EOF' 2>&1
import torch
from fastblocks.bench.env import default_device, device_info
print(int(torch.cuda.is_available()), device_info(default_device())["slug"])
print("torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
EOF
)
read -r has_gpu SLUG <<< "$(head -n 1 <<< "$probe")"
if [ "$has_gpu" != 1 ] && [ "$has_gpu" != 0 ]; then
  echo "$PY could not import torch and fastblocks:" >&2
  echo "$probe" >&2
  exit 3
fi
if [ "$has_gpu" != 1 ] && [ $DRY_RUN -eq 0 ]; then
  echo "no CUDA GPU visible to $PY (torch.cuda.is_available() is False): nothing to run." >&2
  echo "Use --dry-run to check this script end to end without a GPU." >&2
  exit 3
fi
RES="$OUT/results/$SLUG"
SES="$RES/gpu-session"
mkdir -p "$SES/logs"
SUMMARY="$SES/summary.txt"
: > "$SUMMARY"
ROWS="$SES/stages.tsv"
: > "$ROWS"
RESULTS_ROOT=${RESULTS_ROOT:-$([ $DRY_RUN -eq 1 ] && echo "$OUT/copied" || echo bench/results)}

note() { echo "$*" | tee -a "$SUMMARY"; }
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$ROWS"; }  # stage budget status exit seconds

{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 \
    || echo "nvidia-smi: not available"
  tail -n +2 <<< "$probe"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
} > "$SES/gpu.txt"
note "device: $SLUG; dry run: $([ $DRY_RUN -eq 1 ] && echo yes || echo no); out: $OUT"

# run_stage NAME CMD...: the command under the stage's budget (cut shorter if the session's
# 540 s would otherwise be passed), output to logs/NAME.log, one row in the session record.
run_stage() {
  local name=$1
  shift
  local budget=${BUDGET[$name]}
  local left=$((SESSION_BUDGET - (SECONDS - t_start) - 10))
  case $name in sweeps | models_full | thirdparty) left=$((SESSION_BUDGET - (SECONDS - t_start))) ;; esac
  if [ $left -lt $budget ]; then budget=$left; fi
  if [ $DRY_RUN -eq 1 ]; then
    note "$name: skipped (dry run, no GPU stage is run; budget ${BUDGET[$name]} s): would run: $*"
    row "$name" "${BUDGET[$name]}" dry-run "" 0
    return 0
  fi
  if [ $budget -le 0 ]; then
    note "$name: skipped: the session's $SESSION_BUDGET s are spent"
    row "$name" "${BUDGET[$name]}" skipped "" 0
    return 1
  fi
  local t0=$SECONDS
  echo "=== $name (budget $budget s): $*"
  timeout --kill-after=5 "$budget" "$@" > "$SES/logs/$name.log" 2>&1
  local rc=$? status=passed
  [ $rc -ne 0 ] && status=failed
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
  note "$name: $status (exit $rc) in $((SECONDS - t0)) s of $budget (log: logs/$name.log)"
  row "$name" "${BUDGET[$name]}" "$status" "$rc" $((SECONDS - t0))
  tail -n 15 "$SES/logs/$name.log"
  return $rc
}

skip_stage() {  # NAME REASON
  note "$1: skipped: $2"
  row "$1" "${BUDGET[$1]}" skipped "" 0
}

BENCH=("$PY" -m fastblocks.cli bench)
stage_build() {
  run_stage build env MAX_JOBS="$(nproc)" "$PY" -m pip install -e . --no-build-isolation \
    --no-deps --disable-pip-version-check -q || return 1
  [ $DRY_RUN -eq 1 ] || "$PY" -m fastblocks.cli info > "$SES/logs/info.log" 2>&1
}
# -n 4, not pyproject's -n auto (16 workers here): each worker makes its own CUDA context and
# compiles the Triton kernels its files launch, so many workers repeat the same compiles; 4 is
# a guess until a GPU run times it against the stage's budget.
GPU_PYTEST_WORKERS=${GPU_PYTEST_WORKERS:-4}
stage_test() {
  run_stage test "$PY" -m pytest -q -n "$GPU_PYTEST_WORKERS" -m "cuda and not gpu_models" -p no:cacheprovider \
    --junitxml="$SES/cuda-tests.xml"
}
# whole third-party models: too long for the test stage's 90 s beside every op's GPU tests
stage_thirdparty() {
  run_stage thirdparty "$PY" -m pytest -q -n "$GPU_PYTEST_WORKERS" -m gpu_models -p no:cacheprovider \
    --junitxml="$SES/gpu-models-tests.xml"
}
sanitize() {  # TOOL [ARGS of gpu_sanitize_cases.py]
  local tool=$1
  shift
  if [ $DRY_RUN -eq 0 ] && ! command -v compute-sanitizer > /dev/null; then
    skip_stage "$tool" "compute-sanitizer is not on the PATH"
    return 0
  fi
  run_stage "$tool" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" \
    --error-exitcode 3 "$PY" bench/gpu_sanitize_cases.py --backend cuda "$@"
}
stage_memcheck() { sanitize memcheck; }
# racecheck checks shared-memory hazards only, and is the slower tool: fp32 is enough (the
# barriers and indexing are the same code for every dtype).
stage_racecheck() { sanitize racecheck --dtype float32; }
# tuned STAGE SECONDS: sets TUNED to the command prefix that turns the Triton autotuner on for
# at most SECONDS of tuning (then the prior configs; kernels/_autotune.py) and logs each tuning;
# record_tuning STAGE sums the log up into gpu-session/autotune-STAGE.json
# (bench/autotune_record.py: no torch import, well under a second, inside the session's 10 s
# of slack).
tuned() {
  TUNED=(env FASTBLOCKS_AUTOTUNE=tune "FASTBLOCKS_AUTOTUNE_BUDGET_S=$2"
         "FASTBLOCKS_AUTOTUNE_LOG=$SES/autotune-$1.jsonl")
}
record_tuning() {
  "$PY" bench/autotune_record.py "$SES/autotune-$1.jsonl" "$SES/autotune-$1.json" \
    > "$SES/logs/autotune-$1.log" 2>&1 || note "autotune record of $1 failed (logs/autotune-$1.log)"
}
# Tuning cost in quick (fp32, NCHW, fwd, batches 1 and 32), counted from bench/cases.py's quick
# shapes and the kernels' keys and configs (not yet timed on a GPU): 93 keys meet the Triton
# kernels (activation 24, depthwise forward 12, squeeze-excite reduce 8 + scale 5, shuffle 4,
# grouped 1x1 conv 40), each tuned once over its 2-4 configs (the tensors' dtype and a shape
# class are the key, never the batch size itself), each config timed for 5 ms of warm-up and
# 20 ms of calls (do_bench's defaults are 25/100 ms): ~93 x 3 x 30 ms = ~8 s. Compiles: 53
# kernel variants, ~18 of them the priors' that the run compiles anyway, so ~35 more at 0.7 s
# (an activation config) to 1-7 s (depthwise configs, 3x3-7x7, both layouts), cross-compiled
# for sm_90 on our loaded 2-core CPU VM (Triton compiles a kernel on one core): ~30-100 s, so
# on its own it need not fit beside the benchmark's own compiles and timings. To keep the
# stage's 120 s whatever the compiles cost, tuning stops after 45 s (FASTBLOCKS_AUTOTUNE_BUDGET_S:
# later keys run the prior; one tuning in flight may finish, ~4 configs x 2 s) and the log says
# which keys it left at the prior (budget_spent). conv_bn_act's quick cases are inference (BN
# folded: no Triton kernel).
stage_quick() {
  tuned quick 45
  run_stage quick "${TUNED[@]}" "${BENCH[@]}" ops --op all --quick --no-progress \
    --out "$OUT/results" --name ops-all-quick
  local rc=$?
  record_tuning quick
  return $rc
}
stage_models() {
  # The zoo's benchmark command lands separately; probe for it (cheap, also in a dry run).
  if ! "${BENCH[@]}" models --help > "$SES/logs/models-probe.log" 2>&1; then
    skip_stage models "\`fastblocks bench models\` does not exist in this checkout yet"
    return 0
  fi
  # shellcheck disable=SC2086  # MODELS_ARGS is a list of words
  run_stage models "${BENCH[@]}" models $MODELS_ARGS --no-progress --out "$OUT/results"
}
stage_models_full() {
  local common=(models --model "$ZOO4" --batch 256 --dtype bfloat16 --channels-last --quick
                --no-progress --out "$OUT/results")
  run_stage models_full bash -c "$(printf '%q ' "${BENCH[@]}" "${common[@]}") && \
$(printf '%q ' "${BENCH[@]}" "${common[@]}") --train --providers eager,fastblocks && \
$(printf '%q ' "${BENCH[@]}" models --model "$ZOO4" --batch 1 --dtype bfloat16 --channels-last \
  --quick --providers eager,compile,fastblocks --no-progress --out "$OUT/results")"
}
stage_sweeps() {
  local dw=(ops --op depthwise_conv2d --shapes all --layout channels_last --layout nchw --mode fwd
            --mode fwd+bwd --providers eager,compile,triton,cuda,auto --no-progress --out "$OUT/results")
  tuned sweeps 150  # of the stage's 540 s: every depthwise layer, fwd and bwd kernels
  run_stage sweeps "${TUNED[@]}" bash -c "$(printf '%q ' "${BENCH[@]}" "${dw[@]}") --batch 32 \
--dtype bfloat16 --dtype float32 --name depthwise-batch32 && $(printf '%q ' "${BENCH[@]}" \
"${dw[@]}") --batch 256 --dtype bfloat16 --name depthwise-batch256-bf16"
  local rc=$?
  record_tuning sweeps
  return $rc
}

status=0
for s in "${STAGES[@]}"; do
  "stage_$s" || status=1
  if [ "$s" = build ] && [ $status -ne 0 ]; then
    note "build failed: the other stages need it"
    for rest in "${STAGES[@]}"; do
      [ "$rest" = build ] || skip_stage "$rest" "the build failed"
    done
    break
  fi
done

# The session record, then the copy and the archive: always, whatever passed or failed.
"$PY" - "$ROWS" "$SES/session.json" "$SLUG" "$DRY_RUN" "$((SECONDS - t_start))" "$SESSION_BUDGET" <<'EOF'
import json, subprocess, sys
rows, out, slug, dry, seconds, budget = sys.argv[1:]
stages = []
for line in open(rows):
    name, bud, status, rc, secs = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "budget_s": int(bud), "status": status,
                   "exit": int(rc) if rc else None, "seconds": int(secs)})
def git(*a):
    try:
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
json.dump({"device": slug, "dry_run": dry == "1", "seconds": int(seconds),
           "session_budget_s": int(budget), "commit": git("rev-parse", "HEAD") or "unknown",
           "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
           "stages": stages}, open(out, "w"), indent=1)
EOF
note "session: $((SECONDS - t_start)) s of $SESSION_BUDGET"
tar -czf "$OUT/session.tar.gz" -C "$OUT/results" "$SLUG"
cp "$SUMMARY" "$OUT/summary.txt"
mkdir -p "$RESULTS_ROOT/$SLUG"
cp -r "$RES/." "$RESULTS_ROOT/$SLUG/"
echo "copied to $RESULTS_ROOT/$SLUG/ (archive: $OUT/session.tar.gz)"
echo
echo "=== summary"
cat "$SUMMARY"
exit $status
