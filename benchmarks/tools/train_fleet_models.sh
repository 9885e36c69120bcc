#!/usr/bin/env bash
# Train fleet-edge and fleet-cloud from scratch on one CUDA GPU (~5 min on an H200, see
# benchmarks/README.md), then copy the fp16 checkpoints and logs to DEST.
#
#   bash benchmarks/tools/train_fleet_models.sh DEST [WORK]
#
# Needs only python3 with torch, transformers, numpy, pillow, tokenizers (no install: runs
# from the repository root). WORK (default .cache/fleet-train) keeps the rendered data and the
# resumable training state: running the same command again resumes where it stopped.
# Knobs (environment): STEPS (4000), BATCH (128), SAMPLES (120000), VAL (2000), PYTHON.
set -euo pipefail
DEST=$(realpath -m "${1:?usage: train_fleet_models.sh DEST [WORK]}")
WORK=$(realpath -m "${2:-$(dirname "$0")/../../.cache/fleet-train}")
PY=${PYTHON:-python3}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-128}
SAMPLES=${SAMPLES:-120000}
VAL=${VAL:-2000}
cd "$(dirname "$0")/../.."
mkdir -p "$DEST" "$WORK"
common=(--steps "$STEPS" --batch-size "$BATCH" --train-samples "$SAMPLES" --val-samples "$VAL"
        --data-cache "$WORK/data" --ckpt-every 500 --log-every 200 --eval-every 1000 --warmup 200)
# Render once (all cores), then train both models at the same time: each step is short and
# mostly kernel launches, so two processes share the GPU well.
"$PY" -m fleetvl.training "$WORK/fleet-edge" --preset fleet-edge --prepare-only "${common[@]}"
"$PY" -m fleetvl.training "$WORK/fleet-edge" --preset fleet-edge --lr 2e-3 "${common[@]}" \
  > "$DEST/fleet-edge.log" 2>&1 &
edge=$!
"$PY" -m fleetvl.training "$WORK/fleet-cloud" --preset fleet-cloud --lr 1e-3 "${common[@]}" \
  2>&1 | tee "$DEST/fleet-cloud.log"
wait "$edge" || { tail -20 "$DEST/fleet-edge.log"; exit 1; }
tail -3 "$DEST/fleet-edge.log"
for m in fleet-edge fleet-cloud; do
  rm -rf "${DEST:?}/$m"
  cp -r "$WORK/$m/model" "$DEST/$m"
  cp "$WORK/$m/metrics.json" "$DEST/$m.metrics.json"
done
du -sh "$DEST"/fleet-*/
