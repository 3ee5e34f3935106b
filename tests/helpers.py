"""Helpers shared by the tests (imported as `from helpers import ...`; conftest.py holds only fixtures):
tiny configs, the CLI in-process, and datasets in D4RL's exact schema."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np

TINY = ["--critic-hidden", "32", "32", "--actor-hidden", "32", "32", "--ensemble-size", "4",
        "--eval-episodes", "2", "--log-every", "50", "--device", "cpu"]


def random_rollouts(env_id: str = "Hopper-v5", n: int = 600, seed: int = 0, max_episode_steps: int = 100) -> dict:
    """Uniform-random transitions with D4RL's row layout: one row per env step, `timeouts` on
    the last step of an episode cut by the time limit."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(cols, (obs, action, reward, next_obs, terminated, truncated and not terminated)):
            cols[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {k: np.asarray(v) for k, v in cols.items()}


def write_d4rl(path, cols: dict, next_observations: bool = True, timeouts: bool = True,
               dtype=np.float32, column_shape: bool = False) -> None:
    """Write in D4RL's HDF5 schema, with the variations real files have."""
    with h5py.File(path, "w") as f:
        for key, value in cols.items():
            if key == "next_observations" and not next_observations or key == "timeouts" and not timeouts:
                continue
            if value.dtype.kind == "f":
                value = value.astype(dtype)
            if column_shape and value.ndim == 1:
                value = value[:, None]
            f.create_dataset(key, data=value)
        f.create_dataset("infos/qpos", data=np.zeros((len(cols["rewards"]), 6)))
        f["metadata"] = np.bytes_("made by the wsrl tests")


def run_wsrl(*args: str) -> int:
    from wsrl.cli import main

    return main([str(a) for a in args])
