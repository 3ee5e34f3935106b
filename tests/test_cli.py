"""The CLI end to end on tiny data, and every bad input: one line, exit 2, nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import TINY, random_rollouts, run_wsrl, write_d4rl
from wsrl.checkpoint import load_checkpoint


@pytest.mark.parametrize("algo", ["cql", "calql", "iql"])
def test_pretrain_each_algorithm_end_to_end(tmp_path, hopper_file, algo):
    out = tmp_path / algo
    bc_warm_start = [] if algo == "iql" else ["--bc-steps", 20]  # CQL's BC actor steps, then the Q-based ones
    assert run_wsrl("pretrain", "--algo", algo, "--env", "hopper-medium-v2", "--dataset", hopper_file,
                    "--steps", 40, "--out", out, "--eval-every", 20, "--save-every", 20, *bc_warm_start, *TINY) == 0
    meta, weights, _ = load_checkpoint(out)
    assert meta["algo"] == algo and meta["step"] == 40 and meta["env_id"] == "Hopper-v5"
    assert meta["config"]["dataset"] == str(hopper_file)
    assert list(out.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/normalized_score" in r for r in records)
    assert any("losses/critic_loss" in r for r in records)
    assert json.loads((out / "config.json").read_text())["algo"] == algo


def test_pretrain_on_a_minari_dataset(tmp_path, monkeypatch):
    from test_data import _make_minari_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _make_minari_dataset("wsrltest/hopper-cli-v0", dict_obs=False)
    out = tmp_path / "run"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", "minari:wsrltest/hopper-cli-v0", "--steps", 20,
                    "--out", out, *TINY) == 0
    assert load_checkpoint(out)[0]["dataset"] == "minari:wsrltest/hopper-cli-v0"


def test_recipes_pick_domain_defaults_and_flags_override():
    from wsrl.cli import parse_pretrain

    cfg = parse_pretrain(["--env", "hopper-medium-v2"])
    assert cfg.recipe == "wsrl" and cfg.algo == "cql" and cfg.steps == 250_000 and cfg.agent.cql_alpha == 5.0
    assert cfg.net.critic_hidden == (256, 256) and cfg.net.ensemble_size == 10 and cfg.net.layer_norm
    cfg = parse_pretrain(["--env", "antmaze-umaze-v2", "--steps", "7"])
    assert cfg.algo == "calql" and cfg.net.critic_hidden == (256,) * 4 and cfg.agent.cql_lagrange and cfg.steps == 7
    # --algo X alone keeps the recipe's networks and takes X's losses for the domain.
    cfg = parse_pretrain(["--env", "Hopper-v5", "--algo", "iql"])
    assert cfg.agent.expectile == 0.7 and cfg.agent.iql_temperature == 3.0 and cfg.agent.actor_lr == 3e-4
    assert cfg.net.ensemble_size == 10 and cfg.net.actor_tanh
    cfg = parse_pretrain(["--env", "kitchen-mixed-v0", "--recipe", "iql-finetune", "--actor-lr", "1e-3"])
    assert cfg.net.actor_dropout == 0.1 and cfg.net.critic_hidden == (256, 256) and not cfg.net.actor_tanh
    assert cfg.agent.actor_lr == 1e-3


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_wsrl("finetune", "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--warmup-steps", "--utd", "--offline-ratio", "--ensemble-size", "--subsample-size", "--backup-entropy",
                 "--cql-alpha", "--expectile", "--num-envs", "--from-scratch", "--resume"):
        assert flag in text


def _bad_inputs(tmp, hopper_file, pretrained):
    cols = random_rollouts(n=200, seed=1)
    no_key = tmp / "no_key.hdf5"
    write_d4rl(no_key, {k: v for k, v in cols.items() if k != "actions"})
    uneven = tmp / "uneven.hdf5"
    write_d4rl(uneven, dict(cols, rewards=cols["rewards"][:-1]))
    nan = tmp / "nan.hdf5"
    bad = dict(cols, observations=cols["observations"].copy())
    bad["observations"][5, 2] = np.nan
    write_d4rl(nan, bad)
    wide = tmp / "wide.hdf5"
    write_d4rl(wide, dict(cols, actions=cols["actions"] * 1.5))
    garbage = tmp / "garbage.hdf5"
    garbage.write_text("hello")
    base = ["--steps", 10, *TINY]
    pre = ["pretrain", "--env", "Hopper-v5"]
    ft = ["finetune", "--checkpoint", pretrained, "--warmup-steps", 5]
    return {
        "no such file": [*pre, "--dataset", tmp / "nope.hdf5", *base],
        "not a readable HDF5": [*pre, "--dataset", garbage, *base],
        "missing required key": [*pre, "--dataset", no_key, *base],
        "different lengths": [*pre, "--dataset", uneven, *base],
        "observations contain NaN": [*pre, "--dataset", nan, *base],
        "outside the env's bounds": [*pre, "--dataset", wide, *base],
        "observations have size 11, the env's have 17": ["pretrain", "--env", "HalfCheetah-v5", "--dataset", hopper_file, *base],
        "trained on Hopper-v5": [*ft, "--env", "HalfCheetah-v5", *base],
        "does not fit the checkpoint": [*ft, "--ensemble-size", 5, "--steps", 10, "--device", "cpu"],
        "--release-exact True: does not fit the checkpoint": [*ft, "--release-exact", "--steps", 10, "--device", "cpu"],
        "cannot make 'NoSuchEnv-v0'": ["pretrain", "--env", "NoSuchEnv-v0", "--dataset", hopper_file, *base],
        "needs a continuous Box": ["pretrain", "--env", "CartPole-v1", "--dataset", hopper_file, *base],
        "unknown value 'dqn'": [*pre, "--algo", "dqn", "--dataset", hopper_file, *base],
        "--recipe: unknown value 'nope'": [*pre, "--recipe", "nope", "--dataset", hopper_file, *base],
        "--recipe: recipe rlpd has no pretraining": [*pre, "--recipe", "rlpd", "--dataset", hopper_file, *base],
        "--recipe cql-finetune: fine-tunes a cql-finetune pretraining": [*ft, *base, "--recipe", "cql-finetune"],
        "--steps: must be positive": [*pre, "--dataset", hopper_file, *TINY, "--steps", 0],
        "--batch-size: must be positive": [*pre, "--dataset", hopper_file, *base, "--batch-size", -3],
        "--bc-steps: must be >= 0": [*pre, "--dataset", hopper_file, *base, "--bc-steps", -1],
        "--bc-steps: applies to cql and calql": [*pre, "--algo", "iql", "--dataset", hopper_file, *base, "--bc-steps", 5],
        "--warmup-steps 50": [*ft, *base, "--warmup-steps", 50],
        "CUDA is not available": [*pre, "--dataset", hopper_file, *base, "--device", "cuda"],
        "no checkpoint found": ["finetune", "--checkpoint", tmp / "empty", "--warmup-steps", 5, *base],
        "need --dataset": [*ft, "--offline-ratio", 0.5, *base],
    }


def test_every_bad_input_gets_one_line_exit_2_and_writes_nothing(tmp_path, hopper_file, pretrained, capsys):
    (tmp_path / "empty").mkdir()
    for expected, args in _bad_inputs(tmp_path, hopper_file, pretrained).items():
        out = tmp_path / "out"
        capsys.readouterr()
        code = run_wsrl(*args, "--out", out)
        err = capsys.readouterr().err.strip()
        assert code == 2, (expected, err)
        assert expected in err, (expected, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists(), expected


def test_output_directory_holding_another_run_is_refused(tmp_path, hopper_file, pretrained, capsys):
    code = run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 5, "--out", pretrained, *TINY)
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 5, "--out", other, *TINY) == 2
    assert (other / "notes.txt").read_text() == "mine"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 5, "--out", other,
                    "--overwrite", *TINY) == 0
    assert not (other / "notes.txt").exists()


@pytest.mark.slow
def test_console_script_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wsrl.cli", "pretrain", "--env", "Hopper-v5", "--dataset",
                           str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"wsrl pretrain: error: --dataset {tmp_path / 'missing.hdf5'}: no such file"]


def test_divergence_stops_with_quantity_and_step(tmp_path, hopper_file, capsys):
    out = tmp_path / "nan"
    code = run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 40, "--out", out,
                    "--reward-scale", 1e38, "--log-every", 5, "--save-every", 40, *TINY[:-4], "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 3, err
    assert "losses/" in err and "became NaN or Inf at step" in err
    assert not list((out / "checkpoints").glob("step_*")) if (out / "checkpoints").exists() else True


def test_guard_reports_first_bad_step():
    import torch

    from wsrl.errors import DivergenceError
    from wsrl.train import DivergenceGuard

    guard = DivergenceGuard(torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    for step, value in ((1, 1.0), (2, 2.0), (3, float("nan")), (4, float("inf")), (5, 1.0)):
        guard.track({"losses/critic_loss": torch.tensor(value), "q/q_mean": torch.tensor(float("nan"))}, step)
    with pytest.raises(DivergenceError, match="losses/critic_loss became NaN or Inf at step 3"):
        guard.check(model, 5)
    guard = DivergenceGuard(torch.device("cpu"))
    model.weight.data[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="parameter weight"):
        guard.check(model, 9)


def _metrics_without_timing(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def test_same_seed_gives_bit_identical_metrics_on_cpu(tmp_path, hopper_file, pretrained):
    for name in ("a", "b"):
        assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 30, "--out",
                        tmp_path / f"pre_{name}", "--eval-every", 30, *TINY) == 0
        assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", tmp_path / f"ft_{name}", "--steps", 80,
                        "--warmup-steps", 40, "--batch-size", 32, *TINY) == 0
    assert _metrics_without_timing(tmp_path / "pre_a") == _metrics_without_timing(tmp_path / "pre_b")
    assert _metrics_without_timing(tmp_path / "ft_a") == _metrics_without_timing(tmp_path / "ft_b")
