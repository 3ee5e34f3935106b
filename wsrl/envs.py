"""The one place that builds environments: suite specs, D4RL names, wrappers, normalised score."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import json
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources

import gymnasium as gym
import numpy as np

from wsrl.domains import domain_of
from wsrl.errors import UserError


@dataclass(frozen=True)
class EnvSpec:
    """What wsrl knows about an env: its Gymnasium id, domain, reference scores, reward shaping."""

    id: str
    name: str = ""
    """wsrl's name for this configured env (``--env``); the Gymnasium id unless the suite gives one."""
    domain: str = "locomotion"
    max_episode_steps: int | None = None
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments of ``gym.make`` (e.g. antmaze's maze map, kitchen's subtasks)."""
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    ref_source: str = ""
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    sparse_reward: bool = False
    fail_reward: float | None = None
    """Sparse domains: the raw reward of a step that has not succeeded (Cal-QL's return rule)."""
    d4rl_xy_offset: tuple[float, float] | None = None
    """antmaze: where D4RL's x-y origin (its start cell's centre) lies in this env's x-y frame."""
    requires: str | None = None
    d4rl_name: str | None = None
    """Set when the env was named by a D4RL dataset name."""
    d4rl_file: str | None = None
    """File name of that dataset in the d4rl cache folder."""


SHARED = ("domain", "reward_scale", "reward_bias", "sparse_reward", "fail_reward", "requires")
"""Suite-level fields of envs/*.json, shared by every env of the suite."""
ENV_PACKAGES = ("gymnasium_robotics", "shimmy", "panda_gym")
"""Installed packages that register Gymnasium envs when imported: an --env id not in Gymnasium's
registry may be one of theirs, so each installed one is registered before the id is refused."""


def _suites() -> list[dict]:
    folder = resources.files("wsrl.env_specs")
    return [json.loads(f.read_text()) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".json")]


def _spec(entry: dict, shared: dict, **extra) -> EnvSpec:
    fields = {k: v for k, v in entry.items() if k != "d4rl"}
    fields.setdefault("name", entry["id"])
    if fields.get("d4rl_xy_offset") is not None:
        fields["d4rl_xy_offset"] = tuple(fields["d4rl_xy_offset"])
    return EnvSpec(**fields, **shared, **extra)


def resolve_env(name: str) -> EnvSpec:
    """Map a suite env's name (its Gymnasium id unless named) or a D4RL dataset name to its spec
    (a bare spec for unlisted Gymnasium ids)."""
    if not name:
        raise UserError("--env: no environment given (a Gymnasium id like Hopper-v5 or a D4RL name like hopper-medium-v2)")
    for suite in _suites():
        shared = {k: suite[k] for k in SHARED}
        for entry in suite["envs"]:
            if entry.get("name", entry["id"]) == name:
                return _spec(entry, shared)
            if name in entry["d4rl"]:
                return _spec(entry, shared, d4rl_name=name, d4rl_file=entry["d4rl"][name])
    for suite in _suites():
        # Another id of the suite's env family (``family`` in envs/*.json, e.g. AdroitHandDoorSparse-v1):
        # its domain's rewards, success and episode ends, on the env's own settings and time limit.
        if suite.get("family") and re.fullmatch(suite["family"], name):
            return EnvSpec(id=name, name=name, **{k: suite[k] for k in SHARED})
    return EnvSpec(id=name, name=name)


def _register_installed_envs() -> None:
    for package in ENV_PACKAGES:
        if importlib.util.find_spec(package) is None:
            continue
        try:
            # Quiet: their import-time notices (Gymnasium-Robotics prints Farama's release notes)
            # are about envs the user may not have asked for, and would bury a one-line error.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                gym.register_envs(importlib.import_module(package))
        except ImportError:  # installed without its own dependencies: it registers nothing
            continue


class _FlattenDictObs(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, spec: EnvSpec):
        super().__init__(env)
        self._flatten = domain_of(spec).flatten
        size = len(self._flatten(env.observation_space.sample()))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def observation(self, obs):
        return self._flatten(obs)


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
    """A single env with the suite's kwargs, the domain's reward/episode/success conventions
    (wsrl.domains), flat float observations and actions rescaled to [-1, 1]."""
    _route_mujoco_warnings()
    if spec.requires:
        try:
            importlib.import_module(spec.requires)
        except ImportError:
            raise UserError(f"--env {spec.id}: needs the '{spec.requires}' package (pip install {spec.requires.replace('_', '-')})") from None
        gym.register_envs(importlib.import_module(spec.requires))
    elif spec.id not in gym.registry:
        _register_installed_envs()
    kwargs = {"max_episode_steps": spec.max_episode_steps} if spec.max_episode_steps else {}
    domain = domain_of(spec)
    domain.prepare()
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(spec.id, **kwargs, **spec.kwargs)
    except gym.error.Error as e:
        raise UserError(f"--env: cannot make '{spec.id}': {e}") from None
    if not isinstance(env.action_space, gym.spaces.Box):
        raise UserError(f"--env {spec.id}: action space is {env.action_space}, wsrl needs a continuous Box")
    env = domain.wrap(env, spec)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = _FlattenDictObs(env, spec)
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
