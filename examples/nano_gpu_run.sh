#!/usr/bin/env bash
# The GPU run behind the README's trained-model results: `nano` through every step of examples/train_nano.py and
# the stateless baseline, under wall-clock budgets, in two calls ("phases") of at most ~9.5 minutes to a lent
# GPU machine, split at a step boundary, the weights carried between them as bf16 parts of at most 15 MB.
#
#   bash examples/nano_gpu_run.sh a   RxT steps joint, sft, mem-attn, smat-k2 (5.5 min of training) with the
#                                     memory diagnostics after sft ("before"), mem-attn and smat-k2; beside it (on
#                                     the same GPU, or on BASELINE_GPU) the parameter-matched stateless baseline on
#                                     the same data (M_BASE minutes, its only run); then the baseline's
#                                     memory-retention benchmark.
#   bash examples/nano_gpu_run.sh b   (phase a's files in $CARRIED) smat-k4, smat-k8, smat (6.4 min), MRL from
#                                     stage 4 (1.0 min), then benchmarks/memory_retention.py over stage 4 and MRL
#                                     (each with its memory-reset ablation) merged with the baseline's result, and
#                                     benchmarks/memory_diagnostics.py (gates, read-attention entropy).
#
#   bash examples/nano_gpu_run.sh m   (optional, between a and b, as often as the budget allows: phase a's or an
#                                     earlier m's files in $CARRIED) SMAT only, from START_AT (default smat-k4)
#                                     to STOP_AFTER (default smat-k8) -> nano_m.tgz.part-*, phase_m.log; then
#                                     phase b starts at the next step (START_AT=smat) from nano_m's files alone.
#
# What each phase leaves in $OUT (default /tmp/nano_out; at most 8 files, none over 15 MB):
#   a: nano_a.tgz.part-*  (2 parts: the RxT after smat-k2 in bf16, every step's metrics/curves/diagnostics,
#      recipe_summary.json), nano_a.tgz.manifest.json, memory_retention_baseline.json, phase_a.log
#   b: nano_b.tgz.part-*  (4 parts: stage 4 and MRL in bf16, logs), nano_b.tgz.manifest.json,
#      memory_retention.json, memory_retention.png, phase_b.log
#      (memory_diagnostics.json and every step's diagnostics.json are inside the parts and printed in the log)
# Between the calls: copy the last phase's <name>.tgz.part-* and <name>.tgz.manifest.json (and phase a's
# memory_retention_baseline.json) into $CARRIED (default carried/, relative to the repository root), which the next
# phase unpacks into runs/nano. Only the last phase's parts: they hold every earlier step's metrics too.
# `python scripts/carry_weights.py unpack --root runs/nano nano_b.tgz.part-*` puts back runs/nano/4_smat/final
# and runs/nano/5_mrl/final (bf16 weights; `scripts/half_precision_copy.py` makes the packaged model from them).
#
# START_AT=smat-k2 starts phase b one SMAT step earlier (the carried model then stands in for 3_mem_attn/final);
# DIAGNOSTICS=0 skips the per-step diagnostics.
# BASELINE_GPU=1 trains the baseline on a second GPU (the 2-GPU kind) instead of beside the RxT on the first.
# SKIP_BASELINE=1 leaves the baseline out of phase a (phase b then trains it on BASELINE_GPU); SKIP_MRL=1 ends
# phase b at stage 4 (no MRL step, benchmark or part).
# Budgets (minutes, env overrides): M_JOINT M_SFT M_MEMATTN M_K2 (phase a), M_K4 M_K8 M_K16 M_MRL (phase b); the
# baseline gets M_BASE minutes (one call holds at most ~4.5 of them beside its data preparation).
# benchmarks/results/nano_training.json records the step counts the budgets bought. A CPU dry run of both phases at
# toy size (the test does this):
#   PRESET=tiny DEVICE=cpu STEPS=2 EPISODES=2 OUT=/tmp/a bash examples/nano_gpu_run.sh a
set -uo pipefail
phase=${1:?usage: nano_gpu_run.sh a|m|b}
preset=${PRESET:-nano}
device=${DEVICE:-cuda}
out=${OUT:-/tmp/nano_out}
runs=${RUNS:-runs/nano}
carried=${CARRIED:-carried}
episodes=${EPISODES:-64}   # held-out episodes per k of the benchmark
chitchat=${CHITCHAT:-32}
limit=${LIMIT_S:-510}      # a backstop: each training process ends by its budgets before this
# joint's budget pays for compiling the joint stack first (54 s on an H200: nano_training.json, attempt2)
# the third run's minutes (nano_training.json): its smat step ran 1.6 + 3.0 minutes in two calls
M_JOINT=${M_JOINT:-2.5} M_SFT=${M_SFT:-1.0} M_MEMATTN=${M_MEMATTN:-0.3} M_K2=${M_K2:-1.7}
M_K4=${M_K4:-1.8} M_K8=${M_K8:-1.6} M_K16=${M_K16:-3.0} M_MRL=${M_MRL:-1.0}
# the baseline prepares its data (~3.5 min) and compiles (~35 s) inside the same backstop: 4.5 min fit in one call
M_BASE=${M_BASE:-4.5}
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_MININTERVAL=20
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # long SMAT steps fragment
common=(--preset "$preset" --reuse-tokenizer --device "$device" --output-dir "$runs" ${STEPS:+--steps "$STEPS"})
bench=(--episodes-per-k "$episodes" --chitchat "$chitchat" --max-new-tokens 24 --device "$device")
status=0

unpack_carried() {  # every part set in $carried (carry only the latest phase's: it holds the earlier metrics too)
  local manifest name
  for manifest in "$carried"/*.tgz.manifest.json; do
    name=$(basename "$manifest" .tgz.manifest.json)
    python3 scripts/carry_weights.py unpack --root "$runs" "$carried/$name".tgz.part-* 2>&1 | tee -a "$log"
  done
}

case $phase in
a)
  log=$out/phase_a.log
  echo "phase a: RxT joint=$M_JOINT sft=$M_SFT mem-attn=$M_MEMATTN smat-k2=$M_K2 min; baseline $M_BASE min" | tee "$log"
  baseline_pid=
  if [ "${SKIP_BASELINE:-0}" != 1 ]; then
    CUDA_VISIBLE_DEVICES=${BASELINE_GPU:-${CUDA_VISIBLE_DEVICES:-0}} \
      timeout "$limit" python3 examples/train_nano.py "${common[@]}" --baseline-only --minutes "baseline=$M_BASE" \
      > "$runs/baseline.log" 2>&1 &
    baseline_pid=$!
  fi
  timeout "$limit" python3 examples/train_nano.py "${common[@]}" --diagnostics --stop-after smat-k2 \
    --minutes "joint=$M_JOINT" --minutes "sft=$M_SFT" --minutes "mem-attn=$M_MEMATTN" --minutes "smat-k2=$M_K2" \
    2>&1 | tee -a "$log" || status=1
  if [ -n "$baseline_pid" ]; then
    wait "$baseline_pid" || status=1
    cat "$runs/baseline.log" >> "$log"
    timeout 120 python3 benchmarks/memory_retention.py --baseline "baseline=$runs/baseline/final" "${bench[@]}" \
      --out "$out/memory_retention_baseline.json" --plot "$runs/memory_retention_baseline.png" 2>&1 | tee -a "$log"
  fi
  python3 scripts/carry_weights.py pack --root "$runs" --out "$out" --name nano_a "$runs/4_smat_k2/final" \
    2>&1 | tee -a "$log" || status=1
  ;;
m)
  log=$out/phase_m.log
  start_at=${START_AT:-smat-k4}
  stop_after=${STOP_AFTER:-smat-k8}
  echo "phase m from $start_at to $stop_after: RxT smat-k2=$M_K2 smat-k4=$M_K4 smat-k8=$M_K8 smat=$M_K16 min" | tee "$log"
  unpack_carried
  diagnostics=(--diagnostics); [ "${DIAGNOSTICS:-1}" = 0 ] && diagnostics=()
  timeout "$limit" python3 examples/train_nano.py "${common[@]}" "${diagnostics[@]}" --start-at "$start_at" \
    --stop-after "$stop_after" --minutes "smat-k2=$M_K2" --minutes "smat-k4=$M_K4" --minutes "smat-k8=$M_K8" \
    --minutes "smat=$M_K16" 2>&1 | tee -a "$log" || status=1
  python3 scripts/carry_weights.py pack --root "$runs" --out "$out" --name nano_m "$runs/4_${stop_after//-/_}/final" \
    2>&1 | tee -a "$log" || status=1
  ;;
b)
  log=$out/phase_b.log
  start_at=${START_AT:-smat-k4}
  echo "phase b from $start_at: RxT smat-k2=$M_K2 smat-k4=$M_K4 smat-k8=$M_K8 smat=$M_K16 mrl=$M_MRL min" | tee "$log"
  unpack_carried
  baseline_pid=
  if [ -n "${BASELINE_GPU:-}" ] && [ ! -f "$carried/memory_retention_baseline.json" ]; then
    # no baseline result carried from phase a: train and benchmark it here, on the second GPU
    ( export CUDA_VISIBLE_DEVICES=$BASELINE_GPU
      timeout "$limit" python3 examples/train_nano.py "${common[@]}" --baseline-only --minutes "baseline=$M_BASE" &&
      timeout 150 python3 benchmarks/memory_retention.py --baseline "baseline=$runs/baseline/final" "${bench[@]}" \
        --out "$carried/memory_retention_baseline.json" ) > "$runs/baseline.log" 2>&1 &
    baseline_pid=$!
  fi
  diagnostics=(--diagnostics); [ "${DIAGNOSTICS:-1}" = 0 ] && diagnostics=()
  mrl=(--with-mrl); rxt_mrl=(--rxt "mrl=$runs/5_mrl/final"); mrl_final=("$runs/5_mrl/final")
  [ "${SKIP_MRL:-0}" = 1 ] && { mrl=(); rxt_mrl=(); mrl_final=(); }
  timeout "$limit" python3 examples/train_nano.py "${common[@]}" "${diagnostics[@]}" "${mrl[@]}" --start-at "$start_at" \
    --minutes "smat-k2=$M_K2" --minutes "smat-k4=$M_K4" --minutes "smat-k8=$M_K8" --minutes "smat=$M_K16" \
    --minutes "mrl=$M_MRL" 2>&1 | tee -a "$log" || status=1
  if [ -n "$baseline_pid" ]; then
    wait "$baseline_pid" || status=1
    cat "$runs/baseline.log" >> "$log"
  fi
  timeout 240 python3 benchmarks/memory_retention.py --rxt "stage4=$runs/4_smat/final" "${rxt_mrl[@]}" \
    --merge "$carried/memory_retention_baseline.json" "${bench[@]}" --out "$out/memory_retention.json" \
    2>&1 | tee -a "$log" || status=1
  diagnosed=()  # the carried SMAT step's model (smat-k2 after phase a, a later one after phase m), stage 4, MRL
  for step in smat_k2 smat_k4 smat_k8; do
    [ -d "$runs/4_$step/final" ] && diagnosed+=(--rxt "$step=$runs/4_$step/final")
  done
  timeout 60 python3 benchmarks/memory_diagnostics.py "${diagnosed[@]}" \
    --rxt "stage4=$runs/4_smat/final" "${rxt_mrl[@]}" --device "$device" \
    --out "$runs/memory_diagnostics.json" 2>&1 | tee -a "$log" || status=1
  python3 scripts/carry_weights.py pack --root "$runs" --out "$out" --name nano_b "$runs/4_smat/final" \
    "${mrl_final[@]}" 2>&1 | tee -a "$log" || status=1
  ;;
*)
  echo "unknown phase $phase (a | m | b)" >&2
  exit 2
  ;;
esac
ls -l "$out" | tee -a "$log"
exit $status
