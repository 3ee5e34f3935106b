#!/usr/bin/env bash
# WSRL and its baselines on Adroit (paper: pen/door/relocate-binary-v0 on Cal-QL's binary datasets,
# which are not on Minari). Default: pen on its Minari stand-in D4RL/pen/cloned-v2, so scores are not
# the paper's; e.g. ENV=AdroitHandDoor-v1 DATASET=minari:D4RL/door/cloned-v2. DOWNLOAD=1 fetches it.
# Settings and SMOKE=1: scripts/reproduce_domain.sh.
export DOMAIN=adroit ENV=${ENV:-AdroitHandPen-v1}
export DATASET=${DATASET:-minari:D4RL/pen/cloned-v2}
exec "$(dirname "$0")/reproduce_domain.sh" "$@"
