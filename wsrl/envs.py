"""The one place that builds environments: from a spec (wsrl.specs), the Gymnasium env with its
domain's wrappers (wsrl.domains), flat float observations and actions in [-1, 1]."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import warnings

import gymnasium as gym
import numpy as np

from wsrl.domains import domain_of
from wsrl.errors import UserError
from wsrl.specs import EnvSpec


ENV_PACKAGES = ("gymnasium_robotics", "shimmy", "panda_gym")
"""Installed packages that register Gymnasium envs when imported: an --env id not in Gymnasium's
registry may be one of theirs, so each installed one is registered before the id is refused."""


def _import_env_package(package: str):
    """Import an env package for its registrations, quietly: its import-time notices
    (Gymnasium-Robotics prints Farama's release notes) would bury a one-line error."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(package)


def _register_installed_envs() -> None:
    for package in ENV_PACKAGES:
        if importlib.util.find_spec(package) is None:
            continue
        try:
            gym.register_envs(_import_env_package(package))
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
            package = _import_env_package(spec.requires)
        except ImportError:
            raise UserError(f"--env {spec.id}: needs the '{spec.requires}' package (pip install {spec.requires.replace('_', '-')})") from None
        gym.register_envs(package)
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
