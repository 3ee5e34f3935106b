"""scripts/reproduce_<domain>.sh in its smoke mode on a local AntMaze file: a shared pretraining, a
baseline's own pretraining, and RLPD's none (tests/test_recipes.py checks every recipe's settings)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from domain_data import ANTMAZE, antmaze_d4rl_rows, antmaze_episodes, write_d4rl
from wsrl.specs import resolve_env

REPO = Path(__file__).resolve().parent.parent


def test_reproduce_antmaze_smoke(tmp_path):
    data = tmp_path / "umaze.hdf5"
    write_d4rl(data, antmaze_d4rl_rows(antmaze_episodes(), np.array(resolve_env(ANTMAZE).d4rl_xy_offset)))
    out = tmp_path / "out"
    methods = ["wsrl", "wsrl-no-warmup", "iql-finetune", "rlpd"]
    env = {**os.environ, "SMOKE": "1", "SEEDS": "0", "METHODS": " ".join(methods), "ENV": ANTMAZE, "DATASET": str(data), "OUT": str(out),
           "WSRL": str(Path(sys.executable).parent / "wsrl")}
    result = subprocess.run(["bash", str(REPO / "scripts/reproduce_antmaze.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    for method in methods:
        config = json.loads((out / f"{method}_seed0" / "config.json").read_text())
        assert config["recipe"] == method and config["kind"] == "finetune"
    # WSRL and its no-warmup ablation share one pretraining; the baselines pretrain their own way.
    pretrained = {json.loads((out / f"{m}_seed0" / "config.json").read_text())["checkpoint"] for m in methods[:2]}
    assert pretrained == {str(out / "pretrain-wsrl_seed0")}
    assert json.loads((out / "pretrain-iql-finetune_seed0" / "config.json").read_text())["net"]["actor_tanh"] is False
    assert (out / "success_rate.png").stat().st_size > 0
