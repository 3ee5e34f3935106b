"""AntMaze, Adroit and Kitchen: env conventions, success counting, upstream dataset layouts, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import run_wsrl
from domain_data import (ADROIT, ANTMAZE, KITCHEN, adroit_d4rl_rows, adroit_episodes, antmaze_d4rl_rows,
                         antmaze_episodes, kitchen_d4rl_rows, kitchen_episodes, raw_env, write_d4rl, write_minari)
from wsrl.data.buffer import ReplayBuffer
from wsrl.data.offline import OfflineData
from wsrl.data.adapt import ADAPTERS, load_dataset
from wsrl.data.rollout import BufferWriter, Collector, Transitions
from wsrl.envs import make_env
from wsrl.specs import resolve_env
from wsrl.errors import UserError

pytest.importorskip("gymnasium_robotics")
minari = pytest.importorskip("minari")

TINY = ["--critic-hidden", "16", "16", "--actor-hidden", "16", "16", "--ensemble-size", "2", "--eval-episodes", "1",
        "--batch-size", "32", "--log-every", "10", "--device", "cpu", "--threads", "1"]
# D4RL's antmaze evaluation maps (locomotion/maze_env.py), in D4RL's row order: start 'r', goal 'g'.
D4RL_MAPS = {
    "AntMaze_UMaze-v4": ["#####", "#r..#", "###.#", "#g..#", "#####"],
    "AntMaze_Medium-v4": ["########", "#r.##..#", "#..#...#", "##...###", "#..#...#", "#.#..#.#", "#...#.g#",
                          "########"],
    "AntMaze_Large-v4": ["############", "#r...#.....#", "#.##.#.#.#.#", "#......#...#", "#.####.###.#",
                         "#..#.#.....#", "##.#.#.#.###", "#..#...#.g.#", "############"],
}


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        write_minari("D4RL/antmaze/umaze-v1", raw_env(ANTMAZE, continuing_task=True), antmaze_episodes())
        write_minari("D4RL/door/human-v2", raw_env(ADROIT), adroit_episodes())
        write_minari("D4RL/kitchen/mixed-v2",
                     raw_env(KITCHEN, remove_task_when_completed=False, terminate_on_tasks_completed=False),
                     kitchen_episodes())
        yield root


@pytest.fixture
def minari_data(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))


@pytest.fixture(scope="module")
def d4rl_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d4rl")
    offset = np.array(resolve_env(ANTMAZE).d4rl_xy_offset)
    files = {"antmaze": antmaze_d4rl_rows(antmaze_episodes(), offset), "adroit": adroit_d4rl_rows(adroit_episodes(), True),
             "adroit_plain": adroit_d4rl_rows(adroit_episodes(), False), "kitchen": kitchen_d4rl_rows(kitchen_episodes())}
    for name, rows in files.items():
        write_d4rl(folder / f"{name}.hdf5", rows)
    return {name: folder / f"{name}.hdf5" for name in files}


def _cell_centres(rows: list[str], char: str) -> list[tuple[int, int]]:
    return [(i, j) for i, row in enumerate(rows) for j, c in enumerate(row) if c == char]


@pytest.mark.parametrize("env_id", list(D4RL_MAPS))
def test_antmaze_d4rl_offset_maps_every_cell_of_d4rls_maze_onto_the_env(env_id):
    """D4RL puts its start cell's centre at the origin with y growing down the map; shifted by the
    suite's offset, every D4RL cell centre lands in the env's cell of the same kind."""
    spec = resolve_env(env_id)
    env = make_env(spec)
    maze = env.unwrapped.maze
    rows = D4RL_MAPS[env_id]
    (ri, rj), = _cell_centres(rows, "r")
    offset = np.array(spec.d4rl_xy_offset)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            xy = np.array([(j - rj) * 4.0, (i - ri) * 4.0]) + offset
            gi, gj = maze.cell_xy_to_rowcol(xy)
            ours = maze.maze_map[gi][gj]
            assert (ours == 1) == (cell == "#"), (i, j)
            if cell in "rg":
                assert ours == cell, (i, j)
    np.testing.assert_allclose(maze.unique_reset_locations[0], offset)  # D4RL's origin
    (gi, gj), = _cell_centres(rows, "g")
    np.testing.assert_allclose(maze.unique_goal_locations[0], np.array([(gj - rj) * 4.0, (gi - ri) * 4.0]) + offset)


def _place_ant(env: gym.Env, xy: np.ndarray) -> np.ndarray:
    """Put the ant's torso at ``xy`` (env frame), at rest; returns the new qpos."""
    ant = env.unwrapped.ant_env
    qpos, qvel = ant.data.qpos.copy(), np.zeros_like(ant.data.qvel)
    qpos[:2] = xy
    ant.set_state(qpos, qvel)
    return qpos


def test_antmaze_observation_is_d4rls_29_numbers_and_success_needs_the_d4rl_radius():
    env = make_env(resolve_env(ANTMAZE))
    env.reset(seed=0)
    goal = env.unwrapped.goal.copy()
    for distance, expected in ((0.0, 1.0), (0.47, 1.0), (0.6, 0.0)):  # 0.47: inside D4RL's 0.5, outside 0.45
        env.reset(seed=0)
        _place_ant(env, goal + np.array([distance, 0.0]))
        obs, reward, terminated, truncated, info = env.step(np.zeros(8, np.float32))
        ant = env.unwrapped.ant_env.data
        np.testing.assert_allclose(obs, np.concatenate([ant.qpos[:15], ant.qvel[:14]]), rtol=1e-6)  # D4RL's row
        assert abs(np.linalg.norm(obs[:2] - goal) - distance) < 0.02
        assert (reward, terminated, info["success"]) == (expected, bool(expected), expected)
        assert not truncated


class _Zero(torch.nn.Module):
    def __init__(self, act_dim: int):
        super().__init__()
        self.act_dim = act_dim

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return torch.zeros(len(obs), self.act_dim)


class _AntOnGoal(gym.Wrapper):
    """Starts every episode with the ant on the goal."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        _place_ant(self.env, self.env.unwrapped.goal)
        return obs, info


def test_success_is_counted_exactly_when_the_env_reports_one(monkeypatch):
    """Evaluation: one of two episodes starts on the goal; the success rate is 0.5. Training: the
    collector reports the same episode as a success and the other as none when it ends."""
    from wsrl import evaluate

    spec = dataclasses.replace(resolve_env(ANTMAZE), max_episode_steps=5)

    def venv(spec_, n, render_mode=None):
        return gym.vector.SyncVectorEnv([lambda: _AntOnGoal(make_env(spec_)), lambda: make_env(spec_)])

    monkeypatch.setattr(evaluate, "make_vector_env", venv)
    metrics = evaluate.evaluate(_Zero(8), spec, 2, seed=0, step=0, device=torch.device("cpu"))
    assert metrics["eval/success_rate"] == 0.5 and metrics["eval/normalized_score"] == 50.0

    collector = Collector(venv(spec, 2), seed=0)
    ended = []
    for _ in range(6):
        tr, finished = collector.step(np.zeros((2, 8), np.float32))
        ended += [(int(env), ep) for env, ep in zip(tr.env_ids[tr.terminated | tr.truncated], finished)]
    on_goal = [ep for env, ep in ended if env == 0]
    elsewhere = [ep for env, ep in ended if env == 1]
    assert len(on_goal) == 3 and all((ep.success, ep.length, ep.episode_return) == (1.0, 1, 1.0) for ep in on_goal)
    assert [(ep.success, ep.length, ep.episode_return) for ep in elsewhere] == [(0.0, 5, 0.0)]
    # The goal lives outside MuJoCo's state: a resumed run starts new episodes instead.
    assert collector.state_dict()["envs"] == [{}, {}]


def test_adroit_reward_is_binary_and_the_episode_ends_at_the_goal():
    env = make_env(dataclasses.replace(resolve_env(ADROIT), max_episode_steps=3))
    env.reset(seed=0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.zeros(28, np.float32))
        assert (reward, terminated, info["success"]) == (-1.0, False, 0.0)
    assert truncated  # a time-limit cut stays a truncation
    env.reset(seed=0)
    door = env.unwrapped
    qpos = door.data.qpos.copy()
    qpos[door.door_hinge_addrs] = 1.5  # open past the 1.35 rad the task asks for
    door.set_state(qpos, np.zeros_like(door.data.qvel))
    obs, reward, terminated, truncated, info = env.step(np.zeros(28, np.float32))
    assert (reward, terminated, info["success"], truncated) == (0.0, True, 1.0, False)


def test_kitchen_reward_counts_solved_subtasks_and_all_four_end_the_episode():
    """Gymnasium-Robotics rewards a subtask once; the release's reward is the running count."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    env = make_env(resolve_env(KITCHEN))
    env.reset(seed=0)
    kitchen = env.unwrapped
    _, reward, terminated, _, info = env.step(np.zeros(9, np.float32))
    steps = [(reward, info["success"], terminated)]
    for task in ("microwave", "kettle", "bottom burner", "light switch"):
        qpos = kitchen.data.qpos.copy()
        qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
        kitchen.robot_env.set_state(qpos, np.zeros_like(kitchen.data.qvel))
        _, reward, terminated, _, info = env.step(np.zeros(9, np.float32))
        steps.append((reward, info["success"], terminated))
    assert steps == [(0.0, 0.0, False), (1.0, 0.25, False), (2.0, 0.5, False), (3.0, 0.75, False), (4.0, 1.0, True)]


def test_antmaze_minari_and_d4rl_layouts_give_the_same_transitions(minari_data, d4rl_files):
    spec = resolve_env(ANTMAZE)
    episodes = antmaze_episodes()
    from_minari = load_dataset("minari:D4RL/antmaze/umaze-v1", spec)
    from_d4rl = load_dataset(str(d4rl_files["antmaze"]), spec)
    t = len(episodes[0]["actions"])
    ep = episodes[0]["observations"]
    np.testing.assert_allclose(from_minari.observations[:t], np.concatenate([ep["achieved_goal"], ep["observation"]], 1)[:t],
                               rtol=1e-6)
    # D4RL rows (D4RL frame, timeout rows dropped) land on the env's frame: same observations.
    keep = np.r_[0:t - 1, t:2 * t - 1]
    np.testing.assert_allclose(from_d4rl.observations, from_minari.observations[keep], atol=1e-5)
    np.testing.assert_allclose(from_d4rl.next_observations, from_minari.next_observations[keep], atol=1e-5)
    # Minari's rewards were for each episode's own goal at radius 0.45; relabelled for the fixed
    # goal cell at 0.5 and terminal there, as D4RL's rows are.
    near = np.linalg.norm(from_minari.next_observations[:, :2] - np.array([-4.0, 4.0]), axis=1) <= 0.5
    assert near.any() and not near.all()
    np.testing.assert_array_equal(from_minari.rewards, near)
    np.testing.assert_array_equal(from_minari.terminals, near)
    np.testing.assert_array_equal(from_d4rl.terminals, from_d4rl.rewards == 1)
    assert from_d4rl.rewards.sum() > 0


def test_antmaze_file_of_another_frame_is_refused_in_one_line(tmp_path):
    rows = antmaze_d4rl_rows(antmaze_episodes(), np.zeros(2))  # already in the env's frame, not D4RL's
    write_d4rl(tmp_path / "moved.hdf5", rows)
    with pytest.raises(UserError, match=r"of the ant's x-y positions \(after D4RL's offset \(-4.0, -4.0\)\) lie in walls"):
        load_dataset(str(tmp_path / "moved.hdf5"), resolve_env(ANTMAZE))


def test_minaris_medium_maze_is_d4rls_mirrored_and_has_its_own_env():
    """Positions in every open cell of the maze Minari's medium ports were recorded in: accepted by
    AntMaze_Medium-v4-minari, refused by the D4RL-layout env (the mirror image has other walls)."""
    minari_env, d4rl_env = resolve_env("AntMaze_Medium-v4-minari"), resolve_env("antmaze-medium-play-v2")
    maze = make_env(minari_env).unwrapped.maze
    cells = [(i, j) for i, row in enumerate(maze.maze_map) for j, c in enumerate(row) if c != 1]
    xy = np.array([maze.cell_rowcol_to_xy(np.array(c)) for c in cells], dtype=np.float32)
    n = len(xy)
    obs = np.concatenate([xy, np.zeros((n, 27), np.float32)], axis=1)
    data = OfflineData(obs, np.zeros((n, 8), np.float32), np.zeros(n, np.float32), obs, np.zeros(n, bool),
                       np.ones(n, bool), None, "minari")
    assert len(ADAPTERS["antmaze"](data, minari_env, "x")) == n
    with pytest.raises(UserError, match=r"lie in walls or outside AntMaze_Medium-v4's maze"):
        ADAPTERS["antmaze"](data, d4rl_env, "--dataset minari:D4RL/antmaze/medium-play-v1")
    with pytest.raises(UserError, match="has no D4RL maze offset"):
        ADAPTERS["antmaze"](dataclasses.replace(data, layout="d4rl"), minari_env, "--dataset f.hdf5")


def test_adroit_binary_conversion_cuts_after_the_last_success_and_drops_failures(minari_data, d4rl_files):
    spec = resolve_env(ADROIT)
    for source in ("minari:D4RL/door/human-v2", str(d4rl_files["adroit"])):
        data = load_dataset(source, spec)
        # Episode 0 achieves the goal at steps 20-22 (and loses it after): kept up to step 22.
        # Episode 1 never does: dropped.
        assert len(data) == 23, source
        np.testing.assert_array_equal(data.terminals, np.arange(23) >= 20)
        np.testing.assert_array_equal(data.rewards, np.where(np.arange(23) >= 20, 0.0, -1.0))
        np.testing.assert_allclose(data.observations, adroit_episodes()[0]["observations"][:23], rtol=1e-6)
    with pytest.raises(UserError, match="needs each step's success.*use the Minari port"):
        load_dataset(str(d4rl_files["adroit_plain"]), spec)


def test_adroit_and_kitchen_rules_on_hand_made_episodes():
    def data(rewards, success, ends):
        n = len(rewards)
        return OfflineData(np.arange(n, dtype=np.float32)[:, None], np.zeros((n, 1), np.float32),
                           np.asarray(rewards, np.float32), np.zeros((n, 1), np.float32), np.zeros(n, bool),
                           np.asarray(ends, bool), np.asarray(success, bool), "minari")

    # Three trajectories: neg -> pos -> neg -> pos -> neg, never, pos at its last step.
    hits = [0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    ends = [0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1]
    out = ADAPTERS["adroit"](data(np.zeros(12), hits, ends), resolve_env(ADROIT), "--dataset x")
    np.testing.assert_array_equal(out.observations[:, 0], [0, 1, 2, 3, 4, 10, 11])
    np.testing.assert_array_equal(out.rewards, [-1, 0, 0, -1, 0, -1, 0])
    np.testing.assert_array_equal(out.terminals, [0, 1, 1, 0, 1, 0, 1])
    # Cal-QL's returns: each achieving step is terminal, so returns restart after it.
    buf = ReplayBuffer.from_offline(out, 10.0, 5.0, 0.9, -5.0, "cpu")
    np.testing.assert_allclose(buf.storage["mc_returns"].numpy(), [-5 + 0.9 * 5, 5, 5, -5 + 0.9 * 5, 5, -5 + 0.9 * 5, 5])

    kitchen = ADAPTERS["kitchen"](data([0, 1, 2, 3, 4, 4, 2], np.zeros(7), [0] * 6 + [1]), resolve_env(KITCHEN), "x")
    np.testing.assert_array_equal(kitchen.terminals, [0, 0, 0, 0, 1, 1, 0])


def test_kitchen_minari_observations_become_d4rls_layout(minari_data, d4rl_files):
    spec = resolve_env(KITCHEN)
    from_minari = load_dataset("minari:D4RL/kitchen/mixed-v2", spec)
    from_d4rl = load_dataset(str(d4rl_files["kitchen"]), spec)
    assert from_minari.observations.shape[1] == 60 == make_env(spec).observation_space.shape[0]
    t = len(kitchen_episodes()[0]["actions"])
    keep = np.r_[0:t - 1, t:2 * t - 1]
    np.testing.assert_allclose(from_d4rl.observations, from_minari.observations[keep], rtol=1e-6)
    np.testing.assert_array_equal(np.flatnonzero(from_minari.terminals), [t - 2, t - 1])  # reward 4: all solved


def test_sparse_monte_carlo_rule_online_on_a_failing_and_a_succeeding_episode():
    buffer = ReplayBuffer(10, 1, 1, "cpu")
    writer = BufferWriter(buffer, 2, reward_scale=10.0, reward_bias=-5.0, discount=0.9, sparse_fail_reward=-5.0)
    steps = [([0, 1], [0.0, 0.0], [False, False], [False, False]),
             ([0, 1], [0.0, 1.0], [False, True], [False, False]),   # env 1 reaches the goal
             ([0], [0.0], [False], [True])]                         # env 0 is cut by the time limit
    for env_ids, rewards, terminated, truncated in steps:
        n = len(env_ids)
        writer(Transitions(np.array(env_ids), np.zeros((n, 1)), np.zeros((n, 1)), np.array(rewards, np.float32),
                           np.zeros((n, 1)), np.array(terminated), np.array(truncated)))
    mc = buffer.storage["mc_returns"][:5].numpy()
    np.testing.assert_allclose(mc[[0, 2, 4]], [-50.0] * 3)  # never succeeded: -5 / (1 - 0.9) at every step
    np.testing.assert_allclose(mc[[1, 3]], [-5 + 0.9 * 5, 5])
    np.testing.assert_array_equal(buffer.storage["masks"][:5].numpy(), [1, 1, 1, 0, 1])


def test_sparse_rule_takes_the_unsuccessful_reward_from_the_suite():
    from wsrl.config import PretrainConfig
    from wsrl.train import sparse_fail_reward, with_env_defaults

    def fail(env: str, **agent) -> float | None:
        cfg = PretrainConfig(env=env)
        cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, **agent))
        return sparse_fail_reward(with_env_defaults(cfg, resolve_env(env)), resolve_env(env))

    assert fail(ANTMAZE) == 0.0 * 10 - 5 and fail(ADROIT) == -1.0 * 10 + 5  # raw failure reward, scaled once
    assert fail(KITCHEN) is None and fail("Hopper-v5") is None
    with pytest.raises(UserError, match="--sparse-reward: Hopper-v5's suite spec gives no reward of an unsuccessful step"):
        fail("Hopper-v5", sparse_reward=True)


@pytest.fixture
def short_episodes(monkeypatch):
    """The suites' envs with 20-step episodes, so that tiny CLI runs finish episodes quickly."""
    from wsrl import specs

    suites = specs._suites()
    for suite in suites:
        for entry in suite["envs"]:
            entry["max_episode_steps"] = 20
    monkeypatch.setattr(specs, "_suites", lambda: suites)


@pytest.mark.parametrize("domain", ["antmaze", "adroit", "kitchen"])
def test_pretrain_then_finetune_on_minari_and_d4rl_layouts(tmp_path, minari_data, d4rl_files, short_episodes, domain,
                                                          capsys):
    env, minari_id = {"antmaze": (ANTMAZE, "D4RL/antmaze/umaze-v1"), "adroit": (ADROIT, "D4RL/door/human-v2"),
                      "kitchen": (KITCHEN, "D4RL/kitchen/mixed-v2")}[domain]
    for layout, dataset in (("minari", f"minari:{minari_id}"), ("d4rl", d4rl_files[domain])):
        pre, ft = tmp_path / f"pre_{layout}", tmp_path / f"ft_{layout}"
        assert run_wsrl("pretrain", "--env", env, "--algo", "calql", "--dataset", dataset, "--out", pre, "--steps", 10,
                        "--cql-n-actions", 2, *TINY) == 0
        assert run_wsrl("finetune", "--checkpoint", pre, "--out", ft, "--steps", 45, "--warmup-steps", 10, "--utd", 2,
                        *TINY) == 0
        records = [json.loads(line) for line in (ft / "metrics.jsonl").read_text().splitlines()]
        rates = [r["eval/success_rate"] for r in records if "eval/success_rate" in r]
        episodes = [r["train/success"] for r in records if "train/success" in r]
        assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates + episodes)
        assert len(episodes) >= 2  # each training episode's success is logged when it ends
        assert ", success_rate " in capsys.readouterr().out.strip().splitlines()[-1]  # the final summary line


@pytest.mark.slow
def test_a_gymnasium_robotics_id_outside_the_suites_is_registered_and_gets_its_domain(tmp_path):
    """AdroitHandDoorSparse-v1 is in no envs/*.json: a new process (where nothing registered
    Gymnasium-Robotics yet) pretrains on a Minari dataset recorded on it, with adroit's rules."""
    env_id = "AdroitHandDoorSparse-v1"
    assert all(env_id not in f.read_text() for f in (Path(__file__).parents[1] / "envs").glob("*.json"))
    spec = resolve_env(env_id)
    assert (spec.domain, spec.reward_scale, spec.fail_reward, spec.kwargs) == ("adroit", 10.0, -1.0, {})
    env = make_env(spec)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(env.action_space.sample())
    assert (reward, terminated, info["success"]) == (-1.0, False, 0.0)  # not 10 / -0.1: adroit's binary reward
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
        write_minari("local/door-sparse-v0", raw_env(env_id), adroit_episodes(env_id=env_id))
    out = tmp_path / "pre"
    done = subprocess.run([sys.executable, "-m", "wsrl.cli", "pretrain", "--env", env_id, "--dataset",
                           "minari:local/door-sparse-v0", "--out", str(out), "--steps", "10", "--eval-every", "10",
                           "--cql-n-actions", "2", *TINY], env={**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/success_rate"] for r in rows if "eval/success_rate" in r] == [0.0]
    assert json.loads((out / "config.json").read_text())["env"] == env_id


@pytest.mark.slow
def test_an_id_of_an_installed_env_package_is_registered_when_gymnasium_does_not_know_it():
    probe = ("import gymnasium as gym; from wsrl.envs import make_env; from wsrl.specs import resolve_env; known = 'PointMaze_UMaze-v3' in gym.registry; "
             "env = make_env(resolve_env('PointMaze_UMaze-v3')); print(known, env.observation_space.shape, env.action_space.shape)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "False (8,) (2,)", done.stdout + done.stderr[-2000:]


def test_an_antmaze_id_whose_goal_moves_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"--env AntMaze_UMaze-v5: its maze draws the goal from 7 cells"):
        make_env(resolve_env("AntMaze_UMaze-v5"))
