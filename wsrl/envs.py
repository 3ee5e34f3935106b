"""The one place that builds environments: suite specs, D4RL names, wrappers, normalised score."""

from __future__ import annotations

import functools
import importlib
import json
import warnings
from dataclasses import dataclass
from importlib import resources

import gymnasium as gym
import numpy as np

from wsrl.errors import UserError


@dataclass(frozen=True)
class EnvSpec:
    """What wsrl knows about an env: its Gymnasium id, domain, reference scores, reward shaping."""

    id: str
    domain: str = "locomotion"
    max_episode_steps: int | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    ref_source: str = ""
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    sparse_reward: bool = False
    requires: str | None = None
    d4rl_name: str | None = None
    """Set when the env was named by a D4RL dataset name."""
    d4rl_file: str | None = None
    """File name of that dataset in the d4rl cache folder."""


def _suites() -> list[dict]:
    folder = resources.files("wsrl.env_specs")
    return [json.loads(f.read_text()) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".json")]


def resolve_env(name: str) -> EnvSpec:
    """Map a Gymnasium id or a D4RL dataset name to its spec (a bare spec for unlisted ids)."""
    if not name:
        raise UserError("--env: no environment given (a Gymnasium id like Hopper-v5 or a D4RL name like hopper-medium-v2)")
    for suite in _suites():
        shared = {k: suite[k] for k in ("domain", "reward_scale", "reward_bias", "sparse_reward", "requires")}
        for entry in suite["envs"]:
            fields = {k: v for k, v in entry.items() if k != "d4rl"}
            if entry["id"] == name:
                return EnvSpec(**fields, **shared)
            if name in entry["d4rl"]:
                return EnvSpec(**fields, **shared, d4rl_name=name, d4rl_file=entry["d4rl"][name])
    return EnvSpec(id=name)


def flatten_obs(obs, batched: bool = False) -> np.ndarray:
    """Dict observations (e.g. antmaze: observation + desired_goal) concatenated in sorted key
    order, the same for env steps and dataset episodes; ``batched`` keeps a leading time axis."""
    if isinstance(obs, dict):
        return np.concatenate([flatten_obs(obs[k], batched) for k in sorted(obs)], axis=-1)
    x = np.asarray(obs, dtype=np.float32)
    return x.reshape(len(x), -1) if batched else x.reshape(-1)


class _FlattenDictObs(gym.ObservationWrapper):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        size = sum(int(np.prod(s.shape)) for s in env.observation_space.spaces.values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def observation(self, obs):
        return flatten_obs(obs)


@functools.cache  # one process-wide callback, installed on the first env built
def _route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings through Python's ``warnings`` (each distinct message shown once),
    minus the deprecation notices about Gymnasium's own model files.

    MuJoCo prints a warning on every model compile; HalfCheetah-v5's XML alone triggers a
    deprecation notice for each env built (10 training envs + every evaluation), which buries
    the progress bar and is nothing a wsrl user can act on. Simulation warnings (e.g. unstable
    accelerations) still reach the user.
    """
    try:
        import mujoco
    except ImportError:
        return

    def forward(message: str) -> None:
        if "deprecated" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)

    mujoco.set_mju_user_warning(forward)


def make_env(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """A single env with flat float observations and actions rescaled to [-1, 1]."""
    _route_mujoco_warnings()
    if spec.requires:
        try:
            importlib.import_module(spec.requires)
        except ImportError:
            raise UserError(f"--env {spec.id}: needs the '{spec.requires}' package (pip install {spec.requires.replace('_', '-')})") from None
        gym.register_envs(importlib.import_module(spec.requires))
    kwargs = {"max_episode_steps": spec.max_episode_steps} if spec.max_episode_steps else {}
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(spec.id, **kwargs)
    except gym.error.Error as e:
        raise UserError(f"--env: cannot make '{spec.id}': {e}") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UserError(f"--env {spec.id}: action space is {env.action_space}, wsrl needs a continuous Box")
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = _FlattenDictObs(env)
    if not (np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    return env


def make_vector_env(spec: EnvSpec, num_envs: int, render_mode: str | None = None) -> gym.vector.VectorEnv:
    """``num_envs`` copies stepped together; Gymnasium's default next-step autoreset applies.
    ``render_mode`` applies to the first copy only: a video shows one episode, and rendering
    every copy would cost ``num_envs`` times as much."""
    return gym.vector.SyncVectorEnv([lambda i=i: make_env(spec, render_mode if i == 0 else None)
                                     for i in range(num_envs)])


def env_dims(env: gym.Env | gym.vector.VectorEnv) -> tuple[int, int]:
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    return int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))


def normalized_score(spec: EnvSpec, episode_return: float) -> float | None:
    """D4RL-style score x100, or None when the env has no reference scores."""
    if spec.ref_min_score is None or spec.ref_max_score is None:
        return None
    return 100.0 * (episode_return - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score)
