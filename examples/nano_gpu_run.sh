#!/usr/bin/env bash
# The GPU run behind the README's trained-model results: `nano` through stages 1-5 plus the stateless baseline,
# under wall-clock budgets, in two phases that each fit in one 10-minute call to a lent GPU machine.
#
#   bash examples/nano_gpu_run.sh train      stages 1-4 and the parameter-matched stateless baseline
#   bash examples/nano_gpu_run.sh evaluate   stage 5 (MRL) from stage 4, then benchmarks/memory_retention.py over
#                                            stage 4, MRL (each with its memory-reset ablation) and the baseline
#
# Each phase leaves in $OUT (default /tmp/nano_out) its log, and the bf16 copies of its models
# (scripts/half_precision_copy.py) with the stages' metrics and curves, as a tar split into 15 MB parts (the
# machine returns at most 16 MiB a file). The tar mirrors runs/nano: `cat nano_train.tgz.part-* | tar xzf - -C
# runs/nano` puts back runs/nano/4_smat/final and runs/nano/baseline/final, which `evaluate` starts from.
# On a machine that keeps its disk, run both phases in a row. The budgets are minutes of training per stage:
# the stage's step horizon and cosine are shortened to what fits (TrainConfig.max_minutes).
set -uo pipefail
phase=${1:?usage: nano_gpu_run.sh train|evaluate}
out=${OUT:-/tmp/nano_out}
runs=runs/nano
mkdir -p "$out" "$runs"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_MININTERVAL=20

pack() {  # pack NAME DIR...: bf16 copies of the model directories, tarred and split
  local name=$1; shift
  local staging=$runs/export_$name
  rm -rf "$staging" && mkdir -p "$staging"
  for dir in "$@"; do
    [ -f "$dir/model.safetensors" ] && python3 scripts/half_precision_copy.py "$dir" "$staging/${dir#"$runs"/}"
  done
  for f in "$runs"/*/metrics.json "$runs"/*/loss_curves.png "$runs"/*/reward_curve.png "$runs"/recipe_summary.json; do
    [ -f "$f" ] && mkdir -p "$staging/logs/$(basename "$(dirname "$f")")" && cp "$f" "$staging/logs/$(basename "$(dirname "$f")")/"
  done
  tar czf - -C "$staging" . | split -b 15m - "$out/$name.tgz.part-"
}

case $phase in
train)
  timeout 555 python3 examples/train_nano.py --preset nano --reuse-tokenizer --device cuda --output-dir $runs \
    --with-baseline --minutes joint=2.3 --minutes sft=1 --minutes mem-attn=0.5 --minutes smat=2.3 \
    --minutes baseline=1.4 2>&1 | tee "$out/train.log"
  pack nano_train $runs/4_smat/final $runs/baseline/final
  ;;
evaluate)
  timeout 200 python3 examples/train_nano.py --preset nano --device cuda --output-dir $runs --with-mrl \
    --start-at mrl --minutes mrl=2.0 2>&1 | tee "$out/evaluate.log"
  timeout 215 python3 benchmarks/memory_retention.py --rxt stage4=$runs/4_smat/final --rxt mrl=$runs/5_mrl/final \
    --baseline baseline=$runs/baseline/final --episodes-per-k 32 --chitchat 32 --device cuda \
    --out "$out/memory_retention.json" 2>&1 | tee -a "$out/evaluate.log"
  pack nano_mrl $runs/5_mrl/final
  ;;
*)
  echo "unknown phase $phase (train | evaluate)" >&2
  exit 2
  ;;
esac
