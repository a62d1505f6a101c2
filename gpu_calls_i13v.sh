#!/usr/bin/env bash
# i13v: IMPO from the stage-4 model with the fact-value term in the MRL reward (reward.value_weight = 1 and 3),
# each scored beside stage 4 on the validation episodes (memory_retention.py --seed 4321, not the benchmark's 1234).
#   needs: MODEL (the stage-4 model dir), OUT (output dir), the repo on PYTHONPATH, run from the repo root
#   optional: RUNS (where the runs go; default /tmp/i13v_runs: $OUT returns at most 8 files), DEVICE (cuda),
#             PRESET (nano), EPISODES (64 per k), CHITCHAT (32), MINUTES (per run's time budget, 1.7)
# Output ($OUT, 8 files at most): val.json (the three systems), logs.tgz (steps.log, the runs' logs, metrics.json
# and curves, val.png) and mrl_value.tgz.part-* + manifest (both variants' final/ in bf16: scripts/carry_weights.py
# unpack --root <dir> $OUT/mrl_value.tgz.part-* gives <dir>/v1/final and <dir>/v3/final).
# Two GPUs: the variants run side by side; one GPU: one after the other (~70 s each on an H200, then ~1.5 min of
# benchmark). steps.log ends with each system's validation recall per k and mean reward (the lead's
# gpu_calls/select_mrl.py val.json picks: recall at every k and reward at or above stage 4's).
set -u
: "${MODEL:?set MODEL to the stage-4 model dir}" "${OUT:?set OUT}"
RUNS=${RUNS:-/tmp/i13v_runs}; DEVICE=${DEVICE:-cuda}; PRESET=${PRESET:-nano}
EPISODES=${EPISODES:-64}; CHITCHAT=${CHITCHAT:-32}; MINUTES=${MINUTES:-1.7}
HERE=$(cd "$(dirname "$0")" && pwd)
L=$RUNS/logs; mkdir -p "$L" "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True TQDM_MININTERVAL=20
GPUS=0
[ "$DEVICE" = cuda ] && GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")

variant() {  # $1 label, $2 value_weight, $3 GPU index (empty: as set)
  ( [ -n "$3" ] && export CUDA_VISIBLE_DEVICES=$3
    timeout -k 10 150 python3 "$HERE/gpu_calls_i13v_mrl.py" --preset "$PRESET" --model "$MODEL" --out "$RUNS/$1" \
      --device "$DEVICE" --minutes "$MINUTES" --set "reward.value_weight=$2" > "$L/$1.log" 2>&1
    echo "$1 (value_weight=$2) rc=$? ${SECONDS}s" >> "$L/steps.log" )
}

if [ "$GPUS" -ge 2 ]; then
  variant v1 1.0 0 & variant v3 3.0 1 & wait
else
  variant v1 1.0 ""; variant v3 3.0 ""
fi

timeout -k 10 200 python3 benchmarks/memory_retention.py --rxt "stage4=$MODEL" --rxt "v1=$RUNS/v1/final" \
  --rxt "v3=$RUNS/v3/final" --episodes-per-k "$EPISODES" --chitchat "$CHITCHAT" --max-new-tokens 24 --seed 4321 \
  --device "$DEVICE" --out "$OUT/val.json" --plot "$L/val.png" > "$L/val.log" 2>&1
echo "val rc=$? ${SECONDS}s" >> "$L/steps.log"

for v in v1 v3; do  # the train curves: reward and the value term (the recall of the training answers) per update
  python3 -c "import json,sys; h=json.load(open(sys.argv[1]))['train']; print(sys.argv[2], 'reward', \
[round(x['reward_mean'], 2) for x in h], 'value_term', [round(x.get('value_term_mean', -1), 2) for x in h])" \
    "$RUNS/$v/metrics.json" "$v" >> "$L/steps.log" 2>&1
  cp "$RUNS/$v/metrics.json" "$L/${v}_metrics.json" 2>/dev/null
  cp "$RUNS/$v/reward_curve.png" "$L/${v}_reward_curve.png" 2>/dev/null
done
python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['systems']; [print(k, 'recall', v['recall'], \
'reward', round(v['reward_mean'], 3)) for k, v in d.items()]" "$OUT/val.json" >> "$L/steps.log" 2>&1
python3 scripts/carry_weights.py pack --root "$RUNS" --out "$OUT" --name mrl_value "$RUNS/v1/final" "$RUNS/v3/final" \
  >> "$L/steps.log" 2>&1
tar -czf "$OUT/logs.tgz" -C "$RUNS" logs
cat "$L/steps.log"; ls -la "$OUT"
