#!/usr/bin/env bash
# Does re-warming the learning rate, or training the critic first, remove WSRL's post-warmup dip?
# (docs/dip.md). The first demo's CPU recipe on Hopper-v5 (docs/demo-history.md): a hopper-medium dataset from
# the shipped policy, CQL pretraining at demo sizes, then WSRL fine-tuning with each variant below,
# every seed, two runs at a time on one thread each; then one figure and the table in docs/dip.md.
#
#   scripts/study_dip.sh                                  # everything (~21 fine-tuning runs)
#   SEEDS="0" VARIANTS="constant rewarm-1k" scripts/study_dip.sh
#   CHECKPOINT=path/to/cql_run scripts/study_dip.sh       # fine-tune a given CQL pretraining instead
#
# Settings from the environment: OUT (runs/study_dip), SEEDS ("0 1 2"), VARIANTS (all below),
# FT_STEPS (12000 online steps, warmup included), WARMUP (5000), JOBS (2), WSRL (wsrl), PYTHON,
# FIG (docs/dip.png), DOC (docs/dip.md: the table goes between its markers).
# Re-running it skips finished runs and resumes interrupted ones from their checkpoints.
set -euo pipefail
OUT=${OUT:-runs/study_dip}
SEEDS=${SEEDS:-"0 1 2"}
# In this order, so a study cut short has the baseline and the cheapest version of each idea first.
VARIANTS=${VARIANTS:-"constant rewarm-1k delay-1k rewarm-1k-no-warmup rewarm-5k delay-5k wsd"}
# 12k online steps (7k updates after the 5k warmup): the dip happens in the first few thousand
# updates, and 2 shared CPU cores run only ~2 such runs at a time; FT_STEPS=20000 runs longer.
FT_STEPS=${FT_STEPS:-12000}
WARMUP=${WARMUP:-5000}
JOBS=${JOBS:-2}
WSRL=${WSRL:-wsrl}
PYTHON=${PYTHON:-python3}
FIG=${FIG:-docs/dip.png}
DOC=${DOC:-docs/dip.md}
PRE_STEPS=8000
mkdir -p "$OUT/runs"

variant_flags() {  # the fine-tuning flags of one variant
    case $1 in
        constant)            echo "" ;;
        rewarm-1k)           echo "--lr-schedule rewarm --lr-warmup-updates 1000" ;;
        rewarm-5k)           echo "--lr-schedule rewarm --lr-warmup-updates 5000" ;;
        wsd)                 echo "--lr-schedule wsd --lr-warmup-updates 1000 --lr-decay-fraction 0.2" ;;
        delay-1k)            echo "--actor-update-delay 1000" ;;
        delay-5k)            echo "--actor-update-delay 5000" ;;
        rewarm-1k-no-warmup) echo "--lr-schedule rewarm --lr-warmup-updates 1000 --warmup-steps 0" ;;
        no-warmup)           echo "--warmup-steps 0" ;;  # not in the default list: the README's baseline
        *) echo "study_dip.sh: unknown variant '$1'" >&2; return 1 ;;
    esac
}
for variant in $VARIANTS; do variant_flags "$variant" >/dev/null; done

# As the first demo (docs/demo-history.md; today's scripts/demo.py pretrains 20k steps and sets
# no tau): 128x128 networks, 4 critics, tau 0.02 offline (8k CQL steps calibrate the critic),
# back to the published 0.005 online; UTD 2 on batches of 512.
NET=(--critic-hidden 128 128 --actor-hidden 128 128 --ensemble-size 4)
PRE=(--steps $PRE_STEPS --batch-size 256 --cql-n-actions 4 --actor-lr 3e-4 --tau 0.02 --eval-every 1000
     --save-every $PRE_STEPS)
FT=(--steps "$FT_STEPS" --warmup-steps "$WARMUP" --utd 2 --batch-size 512 --actor-lr 3e-4 --tau 0.005
    --eval-every 1000 --save-every 5000)
COMMON=(--eval-episodes 10 --log-every 500 --device cpu --threads 1)

finished() {  # finished RUN_DIR STEPS: its last checkpoint is written
    [[ -d "$1/checkpoints/step_$(printf %09d "$2")" ]]
}

if [[ -z "${CHECKPOINT:-}" ]]; then
    DATA=$OUT/hopper-medium.hdf5
    CHECKPOINT=$OUT/cql
    [[ -f "$DATA" ]] || "$WSRL" collect --env Hopper-v5 --policy hopper-medium --steps 50000 --num-envs 10 \
        --seed 0 --out "$DATA"
    finished "$CHECKPOINT" $PRE_STEPS || "$WSRL" pretrain --algo cql --env Hopper-v5 --dataset "$DATA" \
        --out "$CHECKPOINT" "${NET[@]}" "${PRE[@]}" "${COMMON[@]}" --seed 0 --overwrite
fi

finetune() {  # finetune VARIANT SEED
    local dir=$OUT/runs/$1_seed$2
    if finished "$dir" "$FT_STEPS"; then return 0; fi
    if [[ -f "$dir/config.json" ]] && compgen -G "$dir/checkpoints/step_*" >/dev/null; then
        echo "+ $WSRL finetune --resume $dir"
        "$WSRL" finetune --resume "$dir" > "$dir.log" 2>&1
    else
        # shellcheck disable=SC2046  # the variant's flags are words
        echo "+ $WSRL finetune --checkpoint $CHECKPOINT --out $dir ${FT[*]} ${COMMON[*]} --seed $2 $(variant_flags "$1")"
        "$WSRL" finetune --checkpoint "$CHECKPOINT" --out "$dir" "${FT[@]}" "${COMMON[@]}" --seed "$2" \
            $(variant_flags "$1") --overwrite > "$dir.log" 2>&1
    fi
}

# Seed by seed, so that a study cut short has every variant on its first seeds.
status=0
for seed in $SEEDS; do
    for variant in $VARIANTS; do
        while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || status=1; done
        finetune "$variant" "$seed" &
    done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || status=1; done

runs=()
for variant in $VARIANTS; do
    for seed in $SEEDS; do
        finished "$OUT/runs/${variant}_seed$seed" "$FT_STEPS" && runs+=("$OUT/runs/${variant}_seed$seed")
    done
done
if (( ${#runs[@]} )); then
    "$WSRL" plot "${runs[@]}" --out "$FIG" --title "Hopper-v5: CQL -> WSRL, lr schedules and critic-first delays"
fi
"$PYTHON" scripts/dip_table.py "$OUT/runs" --variants $VARIANTS --seeds $SEEDS --doc "$DOC"
exit $status
