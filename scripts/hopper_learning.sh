#!/usr/bin/env bash
# Learning check on Hopper: medium dataset -> CQL pretraining -> WSRL fine-tuning vs. no warmup.
#
#   scripts/hopper_learning.sh                 # "small": the demo's CPU-sized settings, ~20 min on 2 cores
#   PROFILE=full scripts/hopper_learning.sh    # the published recipe (10 critics 256x2, 250k CQL steps, UTD 4); GPU
#   DATA=~/.d4rl/datasets/hopper_medium-v2.hdf5 ENV=hopper-medium-v2 scripts/hopper_learning.sh
#
# Writes runs/hopper_learning/{cql,wsrl,no_warmup}_seed$SEED and curves.png; prints the scores.
set -euo pipefail
SEED=${SEED:-0}
PROFILE=${PROFILE:-small}
ENV=${ENV:-Hopper-v5}
OUT=${OUT:-runs/hopper_learning}
DATA=${DATA:-$OUT/hopper-medium.hdf5}
WSRL=${WSRL:-wsrl}
mkdir -p "$OUT"

if [ "$PROFILE" = full ]; then
  NET=()
  PRE=(--steps "${PRE_STEPS:-250000}" --eval-every 10000)
  FT=(--steps "${FT_STEPS:-100000}" --eval-every 5000)
else
  NET=(--critic-hidden 128 128 --actor-hidden 128 128 --ensemble-size 4)
  # As the first demo (docs/demo-history.md; today's scripts/demo.py sets no tau): tau 0.02 offline so
  # 8k CQL steps calibrate the critic, back to 0.005 online.
  PRE=(--steps "${PRE_STEPS:-8000}" --cql-n-actions 4 --actor-lr 3e-4 --tau 0.02 --eval-every 1000 --threads 1)
  FT=(--steps "${FT_STEPS:-35000}" --warmup-steps 5000 --utd 2 --batch-size 512 --actor-lr 3e-4 --tau 0.005
      --eval-every 2500 --threads 1)
fi
COMMON=(--eval-episodes 10 --seed "$SEED" --overwrite)

[ -f "$DATA" ] || $WSRL collect --env Hopper-v5 --policy hopper-medium --steps 50000 --num-envs 10 --seed "$SEED" --out "$DATA"
$WSRL pretrain --algo cql --env "$ENV" --dataset "$DATA" --out "$OUT/cql_seed$SEED" "${NET[@]}" "${PRE[@]}" "${COMMON[@]}"
# The two fine-tuning runs share the machine; each uses one thread in the small profile.
$WSRL finetune --checkpoint "$OUT/cql_seed$SEED" --out "$OUT/wsrl_seed$SEED" "${FT[@]}" "${COMMON[@]}" &
$WSRL finetune --checkpoint "$OUT/cql_seed$SEED" --out "$OUT/no_warmup_seed$SEED" "${FT[@]}" --warmup-steps 0 "${COMMON[@]}"
wait
$WSRL plot "$OUT"/wsrl_seed* "$OUT"/no_warmup_seed* --out "$OUT/curves.png" --title "Hopper: CQL -> WSRL vs no warmup"
python3 - "$OUT" "$SEED" <<'PY'
import json, sys
out, seed = sys.argv[1], sys.argv[2]
def evals(run):
    rows = [json.loads(l) for l in open(f"{out}/{run}_seed{seed}/metrics.jsonl") if l.strip()]
    return [(r["step"], round(r["eval/normalized_score"], 1)) for r in rows if "eval/normalized_score" in r]
for run in ("cql", "wsrl", "no_warmup"):
    print(f"{run:10s}", evals(run))
PY
