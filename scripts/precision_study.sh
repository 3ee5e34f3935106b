#!/usr/bin/env bash
# The bf16-vs-fp32 learning comparison of docs/performance.md ("Learning with bf16"), as its
# protocol states it: every study seed fine-tuned from the study's own fp32 pretraining
# checkpoint, once in fp32 (the code-drift check), once in bf16 and once in bf16 with the last
# hidden layer in fp32 (bf16-last-fp32), two runs at a time, plus one CQL pretraining in bf16
# (seed 0). Run it from a git worktree whose runs/study holds the finished study of
# docs/results.md. Running it again skips the runs that finished (their
# checkpoint at --steps) and redoes the others from the start (--overwrite).
set -euo pipefail
WSRL=${WSRL:-.venv/bin/wsrl}
STUDY=runs/study/sweep/hopper
OUT=runs/precision

one() {  # one run: "finetune SEED PRECISION" or "pretrain SEED PRECISION"
    local kind=$1 seed=$2 precision=$3 out
    if [[ $kind == finetune ]]; then
        out=$OUT/hopper/wsrl-$precision/seed$seed
        [[ -d $out/checkpoints/step_000016000 ]] && return 0
        "$WSRL" finetune --checkpoint "$STUDY/_pretrain/wsrl/seed$seed" --recipe wsrl --env Hopper-v5 \
            --seed "$seed" --steps 16000 --utd 2 --batch-size 512 --actor-lr 0.0003 --eval-every 1000 \
            --eval-episodes 10 --log-every 500 --save-every 16000 --threads 1 --device cpu \
            --precision "$precision" --out "$out" --overwrite > /dev/null
    else
        out=$OUT/pretrain-$precision/seed$seed
        [[ -d $out/checkpoints/step_000020000 ]] && return 0
        # The study's pretraining flags (scripts/study_results.toml) plus --precision.
        "$WSRL" pretrain --recipe wsrl --env Hopper-v5 --seed "$seed" \
            --dataset runs/study/hopper-medium-50k.hdf5 --algo cql --critic-hidden 128 128 \
            --actor-hidden 128 128 --ensemble-size 4 --steps 20000 --batch-size 256 --cql-n-actions 4 \
            --actor-lr 0.0003 --eval-every 2500 --save-every 5000 --keep-checkpoints 10 \
            --eval-episodes 10 --log-every 500 --threads 1 --device cpu \
            --precision "$precision" --out "$out" --overwrite > /dev/null
    fi
    echo "$(date +%T) $kind seed $seed $precision: done"
}
export -f one
export WSRL STUDY OUT

{
    echo "pretrain 0 bf16"
    for seed in 0 1 2 3 4; do echo "finetune $seed fp32"; echo "finetune $seed bf16"; done
    # The protocol's next step where bf16 learns differently: the last hidden layer back in fp32.
    for seed in 0 1 2 3 4; do echo "finetune $seed bf16-last-fp32"; done
} | xargs -P 2 -L 1 bash -c 'one "$@"' _
"$WSRL" report "$STUDY/wsrl" "$OUT/hopper" --out "$OUT/report"
