#!/usr/bin/env bash
# WSRL and its baselines on AntMaze (paper: the six D4RL antmaze-*-v2 tasks; default large-diverse,
# its D4RL file found by name). Minari instead: ENV=antmaze-umaze-v2 DATASET=minari:D4RL/antmaze/umaze-v1
# DOWNLOAD=1, or ENV=AntMaze_Large-v4-minari DATASET=minari:D4RL/antmaze/large-diverse-v1 (docs/domains.md).
# Settings and SMOKE=1: scripts/reproduce_domain.sh.
export DOMAIN=antmaze ENV=${ENV:-antmaze-large-diverse-v2}
export DATASET=${DATASET:-$ENV}
exec "$(dirname "$0")/reproduce_domain.sh" "$@"
