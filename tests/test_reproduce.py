"""scripts/reproduce_antmaze.toml in the smoke mode its header gives, on a local AntMaze file, through
`wsrl sweep`: every recipe's run finishes; the WSRL recipes share one pretraining, each baseline has
its own and RLPD none (tests/test_recipes.py checks every recipe's settings)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domain_data import ANTMAZE, antmaze_d4rl_rows, antmaze_episodes, write_d4rl
from helpers import run_wsrl
from wsrl.checkpoint import run_finished
from wsrl.grid import read_sweep_file
from wsrl.recipes import recipe_names
from wsrl.specs import resolve_env

REPO = Path(__file__).resolve().parent.parent
SWEEP = "scripts/reproduce_antmaze.toml"


def header_command(file: Path, out: str) -> list[str]:
    """The `wsrl sweep ... --out OUT` command of a sweep file's header comment (a line ending in a
    backslash goes on), so the test runs what the file tells a user to type."""
    comment = "\n".join(line.removeprefix("#").strip() for line in file.read_text().splitlines() if line.startswith("#"))
    commands = [shlex.split(line) for line in comment.replace("\\\n", " ").splitlines() if line.startswith("wsrl sweep")]
    return next(c for c in commands if c[c.index("--out") + 1] == out)


@pytest.mark.slow
def test_reproduce_antmaze_smoke(tmp_path):
    data = tmp_path / "umaze.hdf5"
    write_d4rl(data, antmaze_d4rl_rows(antmaze_episodes(), np.array(resolve_env(ANTMAZE).d4rl_xy_offset)))
    methods = read_sweep_file(str(REPO / SWEEP))["methods"]
    assert sorted(methods) == sorted(recipe_names())  # every recipe applies to AntMaze
    smoke = header_command(REPO / SWEEP, "runs/smoke_antmaze")
    out = tmp_path / "out"
    smoke[smoke.index("--out") + 1] = str(out)
    cmd = [sys.executable, "-m", "wsrl.cli", *smoke[1:], "--envs", f"{ANTMAZE}={data}", "--seeds", "0"]
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]

    env = out / ANTMAZE
    for method in methods:
        config = json.loads((env / method / "seed0" / "config.json").read_text())
        assert config["recipe"] == method and config["kind"] == "finetune"
        assert run_finished(env / method / "seed0"), method
    # WSRL and its ablations share one pretraining; the baselines pretrain their own way; RLPD does not.
    checkpoint = {m: json.loads((env / m / "seed0" / "config.json").read_text())["checkpoint"] for m in methods}
    assert {checkpoint[m] for m in ("wsrl", "wsrl-no-warmup", "wsrl-retain", "wsrl-append")} == {str(env / "_pretrain/wsrl/seed0")}
    for baseline in ("cql-finetune", "calql-finetune", "iql-finetune"):
        assert checkpoint[baseline] == str(env / "_pretrain" / baseline / "seed0")
    assert checkpoint["rlpd"] == ""
    assert sorted(p.parent.name for p in env.glob("_pretrain/*/seed0")) == ["calql-finetune", "cql-finetune", "iql-finetune", "wsrl"]
    assert json.loads((env / "_pretrain/iql-finetune/seed0/config.json").read_text())["net"]["actor_tanh"] is False

    figure = out / "success_rate.png"
    assert run_wsrl("plot", *sorted(env.glob("*/seed0")), "--metric", "eval/success_rate", "--title", ANTMAZE, "--out", figure) == 0
    assert figure.stat().st_size > 0
