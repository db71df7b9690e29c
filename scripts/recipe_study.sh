#!/usr/bin/env bash
# Issue 9 item 4: the small-scale recipe study behind docs/recipes.md.
#
#   scripts/recipe_study.sh baselines   # I-JEPA, MAE, random init, Bootleg (before) at STEPS steps, probed
#   scripts/recipe_study.sh study       # the Optuna study (flows.study) over Bootleg settings
#   scripts/recipe_study.sh after ARGS  # Bootleg with the study's settings (ARGS: --set k=v ...), probed
#   scripts/recipe_study.sh report      # docs/img/recipes-importance.png + tables on stdout
#
# Everything runs on CPU at the root params.yaml scale (micro ViT, patch 4, 32 px, embedded
# 6,000-image CIFAR-10 subset, batch 64) with the default probes (linear_patch, linear_cls, knn).
# STEPS (equal for every method), TRIALS, TRIAL_STEPS and ROUNDS size it; OUT is the run root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes}
STEPS=${STEPS:-300}
TRIALS=${TRIALS:-10}
TRIAL_STEPS=${TRIAL_STEPS:-200}
ROUNDS=${ROUNDS:-2}
STUDY=${STUDY:-recipes-micro}
NICE=${NICE:-nice -n 15}
mkdir -p "$OUT"

timed() {  # timed NAME CMD...: run CMD, append "NAME seconds" to $OUT/times.txt
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  $NICE "$@"
  t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc)" >>"$OUT/times.txt"
}

pretrain_probe() {  # pretrain_probe NAME --set ...: pretrain STEPS steps, then the default probes
  local name=$1
  shift
  rm -rf "$OUT/$name"
  timed "pretrain-$name" $PY -m bootleg.cli pretrain --steps "$STEPS" --out "$OUT/$name" \
    --set run.progress=false --set run.checkpoint_every="$STEPS" "$@"
  timed "probe-$name" $PY -m bootleg.cli probe --checkpoint "$OUT/$name" --out "$OUT/$name/probe" --json --quiet \
    >"$OUT/$name.probe.json"
}

case "${1:-}" in
baselines)
  pretrain_probe ijepa --set method=ijepa
  pretrain_probe mae --set method=mae
  pretrain_probe bootleg-before --set method=bootleg
  # random init: a fresh encoder of Bootleg's architecture (not `pretrain --steps 1`, which trains)
  $PY -c "
from pathlib import Path
from bootleg.export import load_encoder, save_encoder
from bootleg.models import ViTEncoder
save_encoder(ViTEncoder(**load_encoder('$OUT/bootleg-before').arch()), Path('$OUT/random/encoder.safetensors'))
"
  timed probe-random $PY -m bootleg.cli probe --checkpoint "$OUT/random/encoder.safetensors" --out "$OUT/random/probe" \
    --data embedded --json --quiet >"$OUT/random.probe.json"
  ;;
study)
  shift
  # the flow's own temporary Prefect server, given time to start on a busy machine
  export PREFECT_HOME=${PREFECT_HOME:-$PWD/$OUT/prefect-home} PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300
  export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true
  export PREFECT_LOGGING_TO_API_ENABLED=false PREFECT_UI_ENABLED=false
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT/mlflow.db}
  $NICE $PY -m flows.study run --study-name "$STUDY" --storage "sqlite:///$PWD/$OUT/optuna.db" \
    --n-trials "$TRIALS" --workers 1 --steps "$TRIAL_STEPS" --rounds "$ROUNDS" --probe knn --out "$OUT/study" \
    --set method=bootleg \
    --float optim.lr_max=3e-4:5e-3:log \
    --float optim.warmup_epochs=2:30 \
    --float optim.ema_init=0.99:0.9995 \
    --choice optim.ema_final=0.9995,1.0 \
    --choice model.predictor.depth=2,4,6 \
    --choice model.predictor.embed_dim=32,64,96 \
    --choice masking.num_blocks=2,3,4 \
    --choice masking.group_size=8,16,64 \
    "$@" --json
  ;;
after)
  shift
  pretrain_probe bootleg-after --set method=bootleg "$@"
  ;;
seed)  # seed NAME SEED ARGS: a repeat with another seed, to see the seed-to-seed spread
  shift
  name=$1 seed=$2
  shift 2
  pretrain_probe "$name-seed$seed" --set method=bootleg --set run.seed="$seed" "$@"
  ;;
report)
  $PY bench/recipes.py --out "$OUT" --study "$STUDY"
  ;;
*)
  sed -n 2,13p "$0"
  exit 2
  ;;
esac
