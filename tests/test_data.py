"""Dataset readers on files in the exact upstream schemas; returns-to-go; the replay buffer; env warnings."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import random_rollouts, write_d4rl
from wsrl.data.buffer import ReplayBuffer, sample_mixed
from wsrl.data.offline import OfflineData, read_d4rl_hdf5, read_minari, returns_to_go, validate
from wsrl.envs import make_env
from wsrl.specs import resolve_env
from wsrl.errors import UserError


def test_d4rl_with_next_observations_keeps_every_row(tmp_path, hopper_rollouts):
    write_d4rl(tmp_path / "d.hdf5", hopper_rollouts)
    data = read_d4rl_hdf5(tmp_path / "d.hdf5")
    assert len(data) == len(hopper_rollouts["rewards"])
    np.testing.assert_array_equal(data.next_observations, hopper_rollouts["next_observations"].astype(np.float32))
    np.testing.assert_array_equal(data.terminals, hopper_rollouts["terminals"])
    np.testing.assert_array_equal(data.timeouts, hopper_rollouts["timeouts"])


@pytest.mark.parametrize("dtype,column_shape", [(np.float32, False), (np.float64, True)])
def test_d4rl_without_next_observations_drops_timeout_steps(tmp_path, hopper_rollouts, dtype, column_shape):
    cols = hopper_rollouts
    write_d4rl(tmp_path / "d.hdf5", cols, next_observations=False, dtype=dtype, column_shape=column_shape)
    data = read_d4rl_hdf5(tmp_path / "d.hdf5")
    n, timeouts = len(cols["rewards"]), cols["timeouts"]
    # qlearning_dataset semantics: rows 0..N-2, minus rows flagged as timeouts.
    keep = np.flatnonzero(~timeouts[:-1])
    assert len(data) == len(keep) == n - 1 - timeouts[:-1].sum()
    assert data.observations.dtype == np.float32 and data.rewards.shape == (len(keep),)
    np.testing.assert_array_equal(data.observations, cols["observations"][keep].astype(dtype).astype(np.float32))
    np.testing.assert_array_equal(data.next_observations, cols["observations"][keep + 1].astype(dtype).astype(np.float32))
    np.testing.assert_array_equal(data.terminals, cols["terminals"][keep])
    # The row before each dropped timeout becomes the (cut) end of its episode.
    assert data.timeouts.sum() == timeouts[1:].sum()
    for i in np.flatnonzero(data.timeouts):
        assert timeouts[keep[i] + 1]
    # Within an episode consecutive kept transitions chain: next_obs[i] == obs[i+1].
    ends = data.terminals | data.timeouts
    chained = ~ends[:-1]
    np.testing.assert_array_equal(data.next_observations[:-1][chained], data.observations[1:][chained])


def test_d4rl_without_timeouts_uses_episode_length(tmp_path):
    cols = random_rollouts(n=250, max_episode_steps=50, seed=3)
    write_d4rl(tmp_path / "d.hdf5", cols, next_observations=False, timeouts=False)
    with_len = read_d4rl_hdf5(tmp_path / "d.hdf5", max_episode_steps=50)
    write_d4rl(tmp_path / "t.hdf5", cols, next_observations=False)
    with_key = read_d4rl_hdf5(tmp_path / "t.hdf5")
    if not cols["terminals"].any():  # episodes all cut at 50: the length rule finds the same cuts
        np.testing.assert_array_equal(with_len.observations, with_key.observations)


def test_d4rl_errors_name_the_problem(tmp_path, hopper_rollouts):
    path = tmp_path / "bad.hdf5"
    write_d4rl(path, {k: v for k, v in hopper_rollouts.items() if k != "terminals"})
    with pytest.raises(UserError, match="missing required key.*terminals"):
        read_d4rl_hdf5(path)
    uneven = dict(hopper_rollouts, rewards=hopper_rollouts["rewards"][:-3])
    write_d4rl(path, uneven)
    with pytest.raises(UserError, match="different lengths"):
        read_d4rl_hdf5(path)
    path.write_text("not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5"):
        read_d4rl_hdf5(path)
    with pytest.raises(UserError, match="no such file"):
        read_d4rl_hdf5(tmp_path / "missing.hdf5")


def _tiny(n=4, obs=3, act=2) -> OfflineData:
    return OfflineData(np.zeros((n, obs), np.float32), np.zeros((n, act), np.float32), np.zeros(n, np.float32),
                       np.zeros((n, obs), np.float32), np.zeros(n, bool), np.zeros(n, bool))


def test_validate_refuses_bad_values_and_sizes():
    with pytest.raises(UserError, match="observations have size 3, the env's have 4"):
        validate(_tiny(), 4, 2, "--dataset x")
    with pytest.raises(UserError, match="actions have size 2"):
        validate(_tiny(), 3, 1, "--dataset x")
    data = _tiny()
    data.rewards[2] = np.nan
    with pytest.raises(UserError, match="rewards contain NaN or Inf \\(first at row 2\\)"):
        validate(data, 3, 2, "--dataset x")
    data = _tiny()
    data.actions[1, 0] = 1.5
    with pytest.raises(UserError, match="outside the env's bounds"):
        validate(data, 3, 2, "--dataset x")
    data = _tiny()
    data.actions[1, 0] = 1.0 + 1e-4
    with pytest.warns(UserWarning, match="clipped"):
        assert validate(data, 3, 2, "--dataset x").actions.max() == 1.0


def test_returns_to_go_per_trajectory():
    rewards = np.array([1.0, 2.0, 3.0, 5.0, 1.0], np.float32)
    ends = np.array([False, False, True, False, True])
    got = returns_to_go(rewards, ends, discount=0.5)
    np.testing.assert_allclose(got, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 5 + 0.5 * 1, 1])


def test_returns_to_go_sparse_failure_is_infinite_horizon_value():
    rewards = np.array([-5.0, -5.0, -5.0, 5.0], np.float32)
    ends = np.array([False, True, False, True])
    got = returns_to_go(rewards, ends, discount=0.9, sparse_fail_reward=-5.0)
    np.testing.assert_allclose(got[:2], [-50.0, -50.0])
    np.testing.assert_allclose(got[2:], [-5 + 0.9 * 5, 5.0])


def test_offline_buffer_scales_rewards_once_and_keeps_masks(hopper_rollouts, tmp_path):
    write_d4rl(tmp_path / "d.hdf5", hopper_rollouts)
    data = read_d4rl_hdf5(tmp_path / "d.hdf5")
    buf = ReplayBuffer.from_offline(data, reward_scale=10.0, reward_bias=-5.0, discount=0.99, sparse_fail_reward=None, device="cpu")
    stored = buf.storage
    np.testing.assert_allclose(stored["rewards"].numpy(), data.rewards * 10 - 5, rtol=1e-6)
    np.testing.assert_array_equal(stored["masks"].numpy(), 1.0 - data.terminals)
    assert buf.bytes_per_transition == 4 * (2 * 11 + 3 + 3)


def test_sample_mixed_takes_exact_offline_fraction():
    online = ReplayBuffer(100, 2, 1, "cpu")
    online.add(observations=np.zeros((50, 2)), actions=np.zeros((50, 1)), rewards=np.zeros(50),
               next_observations=np.zeros((50, 2)), masks=np.ones(50))
    offline = ReplayBuffer(100, 2, 1, "cpu")
    offline.add(observations=np.ones((80, 2)), actions=np.ones((80, 1)), rewards=np.ones(80),
                next_observations=np.ones((80, 2)), masks=np.ones(80))
    batch = sample_mixed(online, offline, utd=4, minibatch=256, offline_ratio=0.25)
    assert batch["rewards"].shape == (4, 256)
    assert batch["rewards"].sum().item() == 0.25 * 1024
    assert (batch["rewards"].sum(1) == 64).all()


def _make_minari_dataset(dataset_id: str, dict_obs: bool):
    """Minari's own writer, fed whole episodes (EpisodeBuffer with T+1 observations); its
    step-by-step DataCollector would need jax."""
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Hopper-v5", max_episode_steps=30)
    rng = np.random.default_rng(0)
    episodes = []
    for ep in range(3):
        obs = [env.reset(seed=ep)[0]]
        actions, rewards, terms, truncs = [], [], [], []
        while not (terms and (terms[-1] or truncs[-1])):
            actions.append(rng.uniform(-1, 1, 3).astype(np.float32))
            o, r, term, trunc, _ = env.step(actions[-1])
            obs.append(o), rewards.append(r), terms.append(term), truncs.append(trunc)
        obs = np.asarray(obs)
        if dict_obs:
            obs = {"observation": obs[:, :8], "desired_goal": obs[:, 8:]}
        episodes.append(EpisodeBuffer(id=ep, observations=obs, actions=np.asarray(actions), rewards=rewards,
                                      terminations=terms, truncations=truncs, infos={}))
    if dict_obs:
        env = gym.wrappers.TransformObservation(
            env, lambda o: {"observation": o[:8], "desired_goal": o[8:]},
            gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (8,), np.float64),
                             "desired_goal": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)}))
    return minari.create_dataset_from_buffers(dataset_id, episodes, env=env, algorithm_name="random")


@pytest.mark.parametrize("dict_obs", [False, True])
def test_minari_dataset_built_locally(tmp_path, monkeypatch, dict_obs):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset_id = f"wsrltest/hopper{'dict' if dict_obs else ''}-random-v0"
    made = _make_minari_dataset(dataset_id, dict_obs)
    data = read_minari(dataset_id, download=False)
    episodes = list(made.iterate_episodes())
    assert len(data) == sum(len(ep.rewards) for ep in episodes)
    ep = episodes[0]
    t = len(ep.rewards)
    obs = ep.observations
    if dict_obs:  # flattened in sorted key order: desired_goal before observation
        obs = np.concatenate([obs["desired_goal"], obs["observation"]], axis=-1)
    np.testing.assert_allclose(data.observations[:t], obs[:-1], rtol=1e-6)
    np.testing.assert_allclose(data.next_observations[:t], obs[1:], rtol=1e-6)
    np.testing.assert_array_equal(data.terminals[:t], ep.terminations)
    assert data.episode_ends[t - 1] and not data.episode_ends[: t - 1].any()


def test_minari_missing_dataset_says_how_to_fetch(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(UserError, match="add --download"):
        read_minari("nobody/nothing-v0", download=False)


def test_replay_buffer_wraps_and_round_trips():
    buf = ReplayBuffer(5, 2, 1, "cpu", seed=3)
    for i in range(7):
        buf.add(observations=np.full((1, 2), i), actions=np.zeros((1, 1)), rewards=np.array([i]),
                next_observations=np.zeros((1, 2)), masks=np.ones(1))
    assert len(buf) == 5 and sorted(buf.storage["rewards"].tolist()) == [2, 3, 4, 5, 6]
    copy = ReplayBuffer(5, 2, 1, "cpu")
    copy.load_state_dict(buf.state_dict())
    assert torch.equal(copy.sample(4, 3)["rewards"], buf.sample(4, 3)["rewards"])
    # Read back oldest first, whether the buffer has wrapped or not.
    assert ReplayBuffer.saved_rows(buf.state_dict())["rewards"].tolist() == [2, 3, 4, 5, 6]
    assert ReplayBuffer.saved_rows(buf.state_dict())["observations"][:, 0].tolist() == [2, 3, 4, 5, 6]
    partial = ReplayBuffer(5, 2, 1, "cpu")
    partial.add(observations=np.zeros((3, 2)), actions=np.zeros((3, 1)), rewards=np.arange(3.0),
                next_observations=np.zeros((3, 2)), masks=np.ones(3))
    assert ReplayBuffer.saved_rows(partial.state_dict())["rewards"].tolist() == [0, 1, 2]


def test_mujoco_warnings_routed_and_xml_deprecations_dropped(capfd):
    """HalfCheetah-v5's XML makes MuJoCo print a deprecation notice on every compile: dropped.
    A simulation warning (unstable accelerations) reaches the user as a Python warning."""
    import mujoco

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_env(resolve_env("HalfCheetah-v5"))
        assert not caught and not capfd.readouterr().out
        model, data = env.unwrapped.model, env.unwrapped.data
        data.qvel[:] = 1e12
        mujoco.mj_step(model, data)
    assert any("MuJoCo: Nan, Inf or huge value" in str(w.message) for w in caught), [str(w.message) for w in caught]
