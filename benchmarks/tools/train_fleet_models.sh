#!/usr/bin/env bash
# Train fleet-edge and fleet-cloud from scratch on one CUDA GPU (~5 min on an H200, see
# benchmarks/README.md), then copy the fp16 checkpoints and logs to DEST.
#
#   bash benchmarks/tools/train_fleet_models.sh DEST [WORK]
#
# Needs only python3 with torch, transformers, numpy, pillow, tokenizers (no install: runs
# from the repository root). WORK (default .cache/fleet-train) keeps the rendered data and the
# resumable training state: running the same command again resumes where it stopped.
# A different INIT needs a new WORK (a run folder resumes only the run it started).
# Knobs (environment): STEPS (4000), BATCH (128), SAMPLES (120000), VAL (2000), SEED (0: the data
# draw; a continuation with INIT wants fresh samples), EDGE_LR (2e-3),
# CLOUD_LR (1e-3), PYTHON; DEADLINE (unix seconds): cut the step totals so that training ends
# by then (a lent GPU's command limit); INIT (a folder with fleet-edge/ and fleet-cloud/):
# continue from those checkpoints with a fresh optimizer (the earlier run's state is gone);
# MODELS ("fleet-edge fleet-cloud"): which to train; TASK_MIX: --task-mix for the training split;
# EDGE_MIX / CLOUD_MIX: a task mix for one model only (overrides TASK_MIX for it); FAULTS: the
# share of training questions seen through a mildly faulty camera (--faults);
# PACK (a folder): also write DEST as one tar in 15 MiB parts there (a lent GPU's $OUT).
set -euo pipefail
DEST=$(realpath -m "${1:?usage: train_fleet_models.sh DEST [WORK]}")
WORK=$(realpath -m "${2:-$(dirname "$0")/../../.cache/fleet-train}")
PY=${PYTHON:-python3}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-128}
SAMPLES=${SAMPLES:-120000}
VAL=${VAL:-2000}
SEED=${SEED:-0}
EDGE_LR=${EDGE_LR:-2e-3}
CLOUD_LR=${CLOUD_LR:-1e-3}
cd "$(dirname "$0")/../.."
mkdir -p "$DEST" "$WORK"
MODELS=${MODELS:-fleet-edge fleet-cloud}
read -r -a models <<<"$MODELS"
common=(--steps "$STEPS" --batch-size "$BATCH" --train-samples "$SAMPLES" --val-samples "$VAL"
        --seed "$SEED" --data-cache "$WORK/data" --ckpt-every 500 --log-every 200
        --eval-every 1000 --warmup 200)
if [[ -n "${FAULTS:-}" ]]; then common+=(--faults "$FAULTS"); fi
args() {  # the preset, its learning rate, task mix and (with INIT) the checkpoint to start from
  local lr=$CLOUD_LR mix=${CLOUD_MIX:-${TASK_MIX:-}}
  if [[ $1 == fleet-edge ]]; then lr=$EDGE_LR mix=${EDGE_MIX:-${TASK_MIX:-}}; fi
  echo --preset "$1" --lr "$lr"
  if [[ -n "$mix" ]]; then echo --task-mix "$mix"; fi
  if [[ -n "${INIT:-}" ]]; then echo --init-from "$(realpath "$INIT/$1")"; fi
}
# Render first (all cores; models with the same mix share one rendering), then train the
# models at the same time: each step is short and mostly kernel launches, so two processes
# share the GPU well.
for m in "${models[@]}"; do
  # shellcheck disable=SC2046
  "$PY" -m fleetvl_tools.training "$WORK/$m" --prepare-only "${common[@]}" $(args "$m")
done
if [[ -n "${DEADLINE:-}" ]]; then
  # The final evaluation and the fp16 save take well under a minute; keep that much back.
  common+=(--deadline $((DEADLINE - 60)))
fi
pids=()
for m in "${models[@]}"; do : >"$DEST/$m.log"; done
for m in "${models[@]}"; do
  # shellcheck disable=SC2046
  "$PY" -m fleetvl_tools.training "$WORK/$m" "${common[@]}" $(args "$m") > "$DEST/$m.log" 2>&1 &
  pids+=($!)
done
tail -n +1 -f --pid "${pids[-1]}" "$DEST/${models[-1]}.log" &
for i in "${!models[@]}"; do
  wait "${pids[$i]}" || { tail -20 "$DEST/${models[$i]}.log"; exit 1; }
done
for m in "${models[@]}"; do
  tail -2 "$DEST/$m.log"
  rm -rf "${DEST:?}/$m"
  cp -r "$WORK/$m/model" "$DEST/$m"
  cp "$WORK/$m/metrics.json" "$DEST/$m.metrics.json"
done
du -sh "$DEST"/fleet-*/
if [[ -n "${PACK:-}" ]]; then
  # A lent GPU machine returns only a few files of at most 16 MiB: one tar in 15 MiB parts.
  # Unpack here with: cat PACK/fleet-models.tgz.* | tar xzf - -C DEST
  mkdir -p "$PACK"
  tar czf - -C "$DEST" . | split -b 15m - "$PACK/fleet-models.tgz."
  ls -l "$PACK"
fi
