#!/usr/bin/env bash
# Every measurement of issue 14 in one GPU command, in sequence, each step bounded by `timeout` so one failure
# does not lose the others (about 6 minutes on one H200; the step limits add up to 580 s, so a run under a 600 s
# limit keeps every file written before it was cut):
#   1. benchmarks/serving.py --clients 1 32 64, nano   -> $OUT/serving.json (a run appended), $OUT/serving.png
#   2. benchmarks/latency.py, nano                      -> $OUT/latency.json
#   3. benchmarks/latency.py, ~1B (--append)            -> $OUT/latency.json, then $OUT/latency.png
#   4. benchmarks/serving.py --config 1b --clients 1 32 64 -> $OUT/serving.json (a run appended), $OUT/serving_1b.png
#      (with SKIP_1B=1, steps 3 and 4 are skipped and benchmarks/runtime_overhead.py runs instead, nano
#      -> $OUT/runtime_overhead.json: host time per step of the server process, by part)
# then prints the issue's targets (benchmarks/issue14_targets.py). $OUT/serving.json starts as a copy of
# benchmarks/results/serving.json, so it can replace that file as it is. Every step's output also goes to
# $OUT/issue14_gpu.log.
#
# Run from the repository root:   OUT=/some/dir RXNN_COMMIT=<commit> bash benchmarks/issue14_gpu.sh
# CPU smoke run (tiny sizes, the same steps, a minute or two):   OUT=/tmp/i14 DEVICE=cpu bash benchmarks/issue14_gpu.sh
# Step limits in seconds: T_SERVE_NANO, T_LAT_NANO, T_LAT_1B, T_SERVE_1B. Python: PYTHON (default python3).
set -u
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export RXNN_COMMIT="${RXNN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
export PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"  # serving.py imports bench_utils, decode
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
LOG="$OUT/issue14_gpu.log"
: > "$LOG"

if [ "$DEVICE" = cpu ]; then  # the smallest sizes: checks the steps, the files and the summary, not speed
    SERVE=(--device cpu --preset tiny --clients 1 2 --clients-per-process 2 --turns 1 --max-new-tokens 4)
    SERVE_NANO=("${SERVE[@]}")
    SERVE_1B=("${SERVE[@]}")  # stands in for --config 1b, too big for a CPU
    LAT=(--device cpu --turns 3 --query-tokens 4 --answer-tokens 3)
    LAT_NANO=(--configs tiny)
    LAT_1B=(--configs tiny --arms rxt stateless_prefix_cached)
    SERVE_ANCHOR="tiny"
    OVERHEAD=(--device cpu --preset tiny --sessions 1 2 --clients-per-process 2 --turns 1 --max-new-tokens 4)
else
    SERVE_NANO=(--clients 1 32 64)
    SERVE_1B=(--config 1b --clients 1 32 64)
    LAT=(--hf-every 25)  # the eager transformers arm is slow (seconds a turn): time 9 of its 100 turns
    LAT_NANO=(--configs nano)
    LAT_1B=(--configs 1b)
    SERVE_ANCHOR="nano"
    OVERHEAD=(--device cuda --preset nano --sessions 1 32 64 --clients-per-process 8 --breakdown)
fi

failed=()
step() {  # step NAME LIMIT_S COMMAND...: run bounded, log, remember a failure, go on
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

if [ -f benchmarks/results/serving.json ] && [ ! -f "$OUT/serving.json" ]; then
    cp benchmarks/results/serving.json "$OUT/serving.json"
fi
echo "commit $RXNN_COMMIT, device $DEVICE, out $OUT" | tee -a "$LOG"

step "serving $SERVE_ANCHOR" "${T_SERVE_NANO:-110}" \
    "$PY" benchmarks/serving.py "${SERVE_NANO[@]}" --out "$OUT/serving.json" --plot "$OUT/serving.png"
step "latency ${LAT_NANO[1]}" "${T_LAT_NANO:-100}" \
    "$PY" benchmarks/latency.py "${LAT[@]}" "${LAT_NANO[@]}" --out "$OUT/latency.json"
runs=2
[ "${SKIP_1B:-0}" = 1 ] && runs=1  # SKIP_1B=1: the nano steps only (when little device time is left)
[ "$runs" = 2 ] && step "latency ${LAT_1B[1]}" "${T_LAT_1B:-170}" \
    "$PY" benchmarks/latency.py "${LAT[@]}" "${LAT_1B[@]}" --append --out "$OUT/latency.json"
if [ -f "$OUT/latency.json" ]; then  # re-drawn from whatever finished, even if a run above was cut short
    step "latency plot" 30 "$PY" benchmarks/latency.py --plot-only "$OUT/latency.json"
fi
# With SKIP_1B=1 (time left over): where the server process spends its host time per step, by part
# (benchmarks/runtime_overhead.py --breakdown) -> $OUT/runtime_overhead.json
[ "$runs" = 1 ] && step "runtime overhead" "${T_OVERHEAD:-90}" \
    "$PY" benchmarks/runtime_overhead.py "${OVERHEAD[@]}" --out "$OUT/runtime_overhead.json"
[ "$runs" = 2 ] && step "serving 1b" "${T_SERVE_1B:-150}" \
    "$PY" benchmarks/serving.py "${SERVE_1B[@]}" --out "$OUT/serving.json" --plot "$OUT/serving_1b.png"

step "targets" 20 "$PY" benchmarks/issue14_targets.py --serving "$OUT/serving.json" --runs "$runs" \
    --latency "$OUT/latency.json"
ls -l "$OUT" | tee -a "$LOG"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" | tee -a "$LOG"
    exit 1
fi
echo "all steps done" | tee -a "$LOG"
