#!/usr/bin/env bash
# WSRL and its baselines on FrankaKitchen (paper: kitchen-{complete,partial,mixed}-v0; default mixed,
# its D4RL file found by name). Minari instead: DATASET=minari:D4RL/kitchen/mixed-v2 DOWNLOAD=1.
# Settings and SMOKE=1: scripts/reproduce_domain.sh.
export DOMAIN=kitchen ENV=${ENV:-kitchen-mixed-v0}
export DATASET=${DATASET:-$ENV}
exec "$(dirname "$0")/reproduce_domain.sh" "$@"
