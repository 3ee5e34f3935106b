#!/usr/bin/env bash
# Pretrain -> WSRL and its baselines on one sparse domain at the published settings (the named
# recipes of `wsrl pretrain/finetune --recipe`), one run directory per method and seed, then a
# success-rate plot. Called by scripts/reproduce_{antmaze,adroit,kitchen}.sh, which set DOMAIN, ENV
# and DATASET; every setting below can be overridden from the environment:
#   ENV, DATASET   --env and --dataset (a D4RL name, an HDF5 path or minari:<id>)
#   METHODS        default "wsrl wsrl-no-warmup cql-finetune calql-finetune iql-finetune rlpd"
#   SEEDS          default "0 1 2"
#   OUT            default runs/reproduce_<domain> (runs/smoke_<domain> with SMOKE=1)
#   DOWNLOAD=1     let minari download a dataset that is not on this machine
#   SMOKE=1        tiny networks and steps on the CPU: checks the pipeline in minutes, says nothing
#                  about results
# An interrupted run is resumed from its last checkpoint when the script runs again; a finished
# pretraining run is marked with a .done file and not repeated. Published sizes want a GPU
# (`--device auto`, the default, picks it).
set -euo pipefail

: "${DOMAIN:?set by scripts/reproduce_<domain>.sh}" "${ENV:?}" "${DATASET:?}"
METHODS=${METHODS:-"wsrl wsrl-no-warmup cql-finetune calql-finetune iql-finetune rlpd"}
SEEDS=${SEEDS:-"0 1 2"}
WSRL=${WSRL:-wsrl}
common=(--env "$ENV")
[[ "${DOWNLOAD:-0}" == 1 ]] && common+=(--download)
pre_extra=() ft_extra=() warm_extra=() net_extra=()
if [[ "${SMOKE:-0}" == 1 ]]; then
    OUT=${OUT:-runs/smoke_$DOMAIN}
    net_extra=(--critic-hidden 16 16 --actor-hidden 16 16)
    pre_extra=(--steps 20 --eval-every 20 --save-every 20 --batch-size 32 --cql-n-actions 2 "${net_extra[@]}")
    ft_extra=(--steps 40 --eval-every 40 --save-every 40 --batch-size 32)
    warm_extra=(--warmup-steps 20)  # only for the recipes that warm up (wsrl, rlpd)
    common+=(--eval-episodes 1 --device cpu --threads 1)
fi
OUT=${OUT:-runs/reproduce_$DOMAIN}

run() {  # run COMMAND OUT_DIR ARGS...: start the run, or resume it if its directory holds one
    local command=$1 dir=$2
    shift 2
    if [[ -f "$dir/config.json" ]]; then
        echo "+ $WSRL $command --resume $dir"
        "$WSRL" "$command" --resume "$dir"
    else
        echo "+ $WSRL $command $* --out $dir"
        "$WSRL" "$command" "$@" --out "$dir"
    fi
}

for seed in $SEEDS; do
    for method in $METHODS; do
        if [[ $method == rlpd ]]; then  # no pretraining: SAC from scratch with half of every batch from the dataset
            run finetune "$OUT/rlpd_seed$seed" --recipe rlpd --dataset "$DATASET" --seed "$seed" "${common[@]}" \
                "${ft_extra[@]}" "${warm_extra[@]}" "${net_extra[@]}"
            continue
        fi
        # WSRL and its no-warmup ablation fine-tune one WSRL pretraining run; the CQL, Cal-QL and IQL
        # baselines each pretrain their own way.
        recipe=$method
        [[ $method == wsrl-no-warmup ]] && recipe=wsrl
        pre="$OUT/pretrain-${recipe}_seed$seed"
        [[ -f "$pre/.done" ]] || {
            run pretrain "$pre" --recipe "$recipe" --dataset "$DATASET" --seed "$seed" "${common[@]}" "${pre_extra[@]}"
            touch "$pre/.done"
        }
        warm=()
        [[ $method == wsrl ]] && warm=("${warm_extra[@]}")
        run finetune "$OUT/${method}_seed$seed" --recipe "$method" --checkpoint "$pre" --seed "$seed" \
            "${common[@]}" "${ft_extra[@]}" "${warm[@]}"
    done
done

runs=()
for method in $METHODS; do
    for seed in $SEEDS; do runs+=("$OUT/${method}_seed$seed"); done
done
"$WSRL" plot "${runs[@]}" --metric eval/success_rate --title "$ENV" --out "$OUT/success_rate.png"
