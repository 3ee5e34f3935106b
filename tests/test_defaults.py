"""`wsrl.defaults.run_defaults`: the levels that tests/test_recipes.py and tests/test_cli.py do not
cover (a resumed run, the env suite), and the pretraining checkpoint read once per fine-tuning run."""

import json

from helpers import TINY, run_wsrl
from wsrl.config import FinetuneConfig, to_dict


def test_the_pretrained_checkpoint_is_read_once_per_finetune_run(tmp_path, pretrained, monkeypatch):
    from wsrl import checkpoint

    read = []
    load_file = checkpoint.load_file
    monkeypatch.setattr(checkpoint, "load_file", lambda path: read.append(path) or load_file(path))
    out = tmp_path / "ft"
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 20, "--warmup-steps", 10,
                    *TINY, "--batch-size", 32, "--eval-every", 1000) == 0
    assert [p.name for p in read] == ["model.safetensors", "state.safetensors"]  # once, for the defaults and the run
    assert all(pretrained in p.parents for p in read)
    assert json.loads((out / "config.json").read_text())["reward_scale"] == 1.0  # the checkpoint's, recorded


def test_a_resumed_run_keeps_its_own_config_and_flags_win_over_it(tmp_path):
    from wsrl.cli import parse_finetune

    began = FinetuneConfig(env="Hopper-v5", checkpoint="runs/pre", warmup_steps=40, utd=2, out="elsewhere")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "finetune", **to_dict(began)}))
    cfg = parse_finetune(["--resume", str(tmp_path), "--utd", "3"])
    assert cfg.warmup_steps == 40 and cfg.batch_size == began.batch_size  # not the recipe's 5000 and 1024
    assert cfg.utd == 3 and cfg.out == cfg.resume == str(tmp_path)


def test_the_env_suite_fills_only_what_every_level_left_unset():
    from wsrl.cli import parse_pretrain
    from wsrl.specs import resolve_env
    from wsrl.train import with_env_defaults

    spec = resolve_env("antmaze-umaze-v2")
    cfg = with_env_defaults(parse_pretrain(["--env", "antmaze-umaze-v2"]), spec)
    assert (cfg.reward_scale, cfg.reward_bias, cfg.agent.sparse_reward) == (10.0, -5.0, True)
    cfg = parse_pretrain(["--env", "antmaze-umaze-v2", "--reward-scale", "2", "--sparse-reward", "False"])
    cfg = with_env_defaults(cfg, spec)
    assert (cfg.reward_scale, cfg.reward_bias, cfg.agent.sparse_reward) == (2.0, -5.0, False)
