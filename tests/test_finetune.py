"""`wsrl finetune`: warmup, fresh buffer, baselines, autoreset, masks, resume."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import TINY, run_wsrl
from wsrl.checkpoint import load_checkpoint
from wsrl.data.buffer import ReplayBuffer
from wsrl.data.rollout import BufferWriter, Collector
from wsrl.precision import effective_precision

FAST = [*TINY, "--batch-size", 32, "--eval-every", 1000]


def _records(run_dir, key):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in lines if key in r}


def test_warmup_makes_no_updates_and_stores_exactly_k(tmp_path, pretrained):
    out = tmp_path / "ft"
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 150, "--warmup-steps", 100, *FAST) == 0
    updates, size = _records(out, "train/updates"), _records(out, "buffer/size")
    assert updates[50] == 0 and updates[100] == 0 and size[100] == 100
    assert updates[150] == 50 and size[150] == 150
    _, _, state = load_checkpoint(out)
    # 50 env steps after warmup x UTD 4 critic steps, 50 actor steps; nothing during warmup.
    critic_steps = state["optimizers"]["critic"]["state"][0]["step"].item()
    actor_steps = state["optimizers"]["actor"]["state"][0]["step"].item()
    pre_critic = load_checkpoint(pretrained)[2]["optimizers"]["critic"]["state"][0]["step"].item()
    assert critic_steps - pre_critic == 200 and actor_steps - 60 == 50
    # Evaluated before anything happened, so the curve starts at the pretrained policy.
    assert 0 in _records(out, "eval/return")


def test_buffer_holds_no_offline_data_unless_asked(tmp_path, pretrained, hopper_file):
    n_data = 599  # hopper_file: 600 rows with next_observations
    for extra, expected in (([], 120), (["--offline-append"], 120 + n_data + 1)):
        out = tmp_path / f"ft{len(extra)}"
        assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 120, "--warmup-steps", 100,
                        "--dataset", hopper_file, "--offline-ratio", 0.25, *extra, *FAST) == 0
        assert _records(out, "buffer/size")[120] == expected


def test_autoreset_step_is_not_stored_and_truncation_keeps_the_mask():
    venv = gym.vector.SyncVectorEnv([lambda: gym.make("Hopper-v5", max_episode_steps=5) for _ in range(2)])
    collector = Collector(venv, seed=0)
    buffer = ReplayBuffer(100, 11, 3, "cpu")
    writer = BufferWriter(buffer, 2, reward_scale=1.0, reward_bias=0.0, discount=0.9)
    stored, finished = [], []
    for _ in range(12):
        tr, done = collector.step(np.zeros((2, 3), np.float32))
        writer(tr)
        stored.append(tr)
        finished += done
    # 12 vector steps x 2 envs, minus one autoreset step per env per finished episode.
    assert len(buffer) == 24 - 2 * 2
    assert [episode.length for episode in finished] == [5, 5, 5, 5]
    obs = buffer.storage["observations"][: len(buffer)]
    nxt = buffer.storage["next_observations"][: len(buffer)]
    # A stored autoreset step would start from an episode's final observation; none does.
    truncated = torch.as_tensor(np.concatenate([t.truncated for t in stored]))
    assert truncated.sum() == 4
    for final in nxt[truncated]:
        assert not (obs == final).all(-1).any()
    assert (buffer.storage["masks"][: len(buffer)] == 1).all()  # truncated, not terminated: bootstrap
    # Both episodes of each env ended, so every Monte-Carlo return has been filled in.
    assert torch.isfinite(buffer.storage["mc_returns"][: len(buffer)]).all()


def test_termination_zeroes_the_mask():
    env = gym.vector.SyncVectorEnv([lambda: gym.make("Hopper-v5")])
    collector = Collector(env, seed=0)
    buffer = ReplayBuffer(2000, 11, 3, "cpu")
    writer = BufferWriter(buffer, 1, 1.0, 0.0, 0.99)
    terminated = False
    while not terminated:  # full throttle topples the hopper quickly
        tr, _ = collector.step(np.ones((1, 3), np.float32))
        writer(tr)
        terminated = bool(tr.terminated.any())
    masks = buffer.storage["masks"][: len(buffer)]
    assert masks[-1] == 0 and (masks[:-1] == 1).all()
    rewards = buffer.storage["rewards"][: len(buffer)].numpy()
    assert buffer.storage["mc_returns"][0].item() == pytest.approx(sum(r * 0.99**i for i, r in enumerate(rewards)), rel=1e-4)


@pytest.mark.parametrize("algo", ["calql", "iql"])
def test_online_baselines_with_pretraining_losses(tmp_path, pretrained, algo):
    out = tmp_path / algo
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 60, "--warmup-steps", 50,
                    "--online-algo", algo, "--no-sample-finished-episodes", *FAST) == 0
    assert _records(out, "train/updates")[60] == 10


def test_calql_online_waits_one_time_limit_then_samples_finished_episodes(tmp_path, pretrained):
    # --online-algo calql alone takes the calql-finetune baseline's online half: UTD 1, no warmup,
    # and the release's replay rule (Hopper's time limit is 1000 steps).
    out = tmp_path / "calql"
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 1010, "--online-algo", "calql",
                    *TINY, "--batch-size", 32, "--log-every", 5, "--eval-every", 5000) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["sample_finished_episodes"] and config["utd"] == 1 and config["warmup_steps"] == 0
    updates = _records(out, "train/updates")
    assert updates[1000] == 0 and updates[1010] == 10


def test_finished_only_sampling_skips_running_episodes():
    buffer = ReplayBuffer(10, 1, 1, "cpu", seed=0)
    writer = BufferWriter(buffer, 1, 1.0, 0.0, 0.9)
    from wsrl.data.rollout import Transitions

    def step(obs, terminated):
        writer(Transitions(np.array([0]), np.array([[obs]]), np.zeros((1, 1)), np.ones(1), np.array([[obs + 1]]),
                           np.array([terminated]), np.array([False])))

    for t in range(3):
        step(float(t), t == 2)  # an episode of 3 steps ends
    step(10.0, False)  # a running one
    drawn = buffer.sample(500, finished_only=True)["observations"][:, 0]
    assert set(drawn.tolist()) == {0.0, 1.0, 2.0}
    assert torch.isfinite(buffer.sample(500, finished_only=True)["mc_returns"]).all()
    assert 10.0 in buffer.sample(500)["observations"][:, 0].tolist()


def test_release_exact_batches_concatenate_online_then_offline_rows():
    from wsrl.data.buffer import sample_mixed

    online, offline = ReplayBuffer(8, 1, 1, "cpu"), ReplayBuffer(8, 1, 1, "cpu")
    for buf, value in ((online, 1.0), (offline, -1.0)):
        buf.add(observations=np.full((8, 1), value), actions=np.zeros((8, 1)), rewards=np.zeros(8),
                next_observations=np.zeros((8, 1)), masks=np.ones(8))
    mixed = sample_mixed(online, offline, utd=4, minibatch=4, offline_ratio=0.5)["observations"][..., 0]
    assert (mixed == -1).sum(1).tolist() == [2, 2, 2, 2]  # the exact fraction in every minibatch
    release = sample_mixed(online, offline, utd=4, minibatch=4, offline_ratio=0.5, concatenate=True)["observations"][..., 0]
    assert release.tolist() == [[1.0] * 4, [1.0] * 4, [-1.0] * 4, [-1.0] * 4]  # online-only, then offline-only


def test_from_scratch_rlpd_recipe(tmp_path, hopper_file):
    out = tmp_path / "rlpd"
    assert run_wsrl("finetune", "--from-scratch", "--env", "Hopper-v5", "--dataset", hopper_file, "--offline-ratio", 0.5,
                    "--out", out, "--steps", 60, "--warmup-steps", 50, *FAST) == 0
    meta, _, _ = load_checkpoint(out)
    assert meta["config"]["from_scratch"] and meta["config"]["offline_ratio"] == 0.5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, pretrained, precision):
    common = ["--checkpoint", pretrained, "--warmup-steps", 40, "--save-every", 30, "--precision", precision, *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_wsrl("finetune", "--out", full, "--steps", 130, *common) == 0
    assert run_wsrl("finetune", "--out", part, "--steps", 70, *common) == 0  # "interrupted" after 70 steps
    assert run_wsrl("finetune", "--resume", part, "--steps", 130) == 0
    (meta_a, model_a, state_a), (meta_b, model_b, state_b) = load_checkpoint(full), load_checkpoint(part)
    assert meta_a["step"] == meta_b["step"] == 130
    assert meta_b["config"]["precision"] == effective_precision(precision, torch.device("cpu"))
    assert state_a["counters"] == state_b["counters"]
    for key, value in state_a["buffer"].items():
        assert torch.equal(value, state_b["buffer"][key]), key
    for key, value in model_a.items():
        assert torch.equal(value, model_b[key]), key


def _as_format_1(run_dir):
    """Rewrite a run's newest checkpoint and config.json as wsrl wrote them before format 2: the CQL-only
    max-target field, no recipe, no precision (fp32), and a collector state without success tracking."""
    from wsrl.checkpoint import _sha256, list_checkpoints

    def old_config(config):
        config = {**config, "agent": dict(config["agent"])}
        config["agent"]["cql_max_target_backup"] = config["agent"].pop("max_target_backup")
        config.pop("recipe")
        config.pop("precision")
        return config

    (run_dir / "config.json").write_text(json.dumps(old_config(json.loads((run_dir / "config.json").read_text()))))
    ckpt = list_checkpoints(run_dir)[-1]
    meta = json.loads((ckpt / "state.json").read_text())
    del meta["state"]["collector"]["episode_success"]
    meta["config"], meta["format_version"] = old_config(meta["config"]), 1
    (ckpt / "state.json").write_text(json.dumps(meta))
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["format_version"] = 1
    manifest["files"]["state.json"] = {"size": (ckpt / "state.json").stat().st_size, "sha256": _sha256(ckpt / "state.json")}
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


def test_resume_of_a_format_1_checkpoint_matches_uninterrupted_run(tmp_path, pretrained):
    common = ["--checkpoint", pretrained, "--warmup-steps", 40, "--save-every", 30, *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_wsrl("finetune", "--out", full, "--steps", 100, *common) == 0
    assert run_wsrl("finetune", "--out", part, "--steps", 60, *common) == 0
    _as_format_1(part)
    assert load_checkpoint(part)[0]["format_version"] == 1
    assert run_wsrl("finetune", "--resume", part, "--steps", 100) == 0
    (meta_a, model_a, _), (meta_b, model_b, _) = load_checkpoint(full), load_checkpoint(part)
    same = {key: value for key, value in meta_a["config"].items() if key not in ("out", "resume")}
    assert meta_b["format_version"] == 2 and same.items() <= meta_b["config"].items()
    for key, value in model_a.items():
        assert torch.equal(value, model_b[key]), key
