"""The sparse benchmark domains (antmaze, adroit, kitchen): what each changes about its env.

One class per domain holds its env-side rules, so a convention is defined once:

- ``flatten``: the domain's observation layout, the same for env steps and dataset episodes;
- ``wrap``: rewards and episode ends as the WSRL release uses them, converted from
  Gymnasium-Robotics' values, and a uniform ``info["success"]`` in [0, 1] on every step.
  Evaluation and the online loop only take its maximum over an episode (antmaze: the goal was
  reached; adroit: the goal was achieved at some step; kitchen: the fraction of the 4 subtasks
  solved, which only grows);

Datasets are mapped onto these conventions by ``wsrl.data.adapt``; those written by ``wsrl
collect`` come from these wrapped envs and are left as they are.
``docs/domains.md`` lists every difference from the paper's gym + d4rl + mj_envs stack.
"""

from __future__ import annotations

import abc
import functools
import warnings

import gymnasium as gym
import numpy as np

from wsrl.errors import UserError
from wsrl.specs import EnvSpec


def flatten_sorted(obs, batched: bool = False) -> np.ndarray:
    """Dict observations concatenated in sorted key order (recursively); ``batched`` keeps a
    leading time axis. The layout of dict-observation envs outside the domains below."""
    if isinstance(obs, dict):
        return np.concatenate([flatten_sorted(obs[k], batched) for k in sorted(obs)], axis=-1)
    x = np.asarray(obs, dtype=np.float32)
    return x.reshape(len(x), -1) if batched else x.reshape(-1)


Layout = list[list]
"""What the flat observation holds, in order: [source, size] pairs; a source names a key of the
env's dict observation (nested keys joined by "/"), with a [start:end] slice where only part is
used. An exported policy carries it, so that its user can build the input from the env."""


def sorted_layout(space: gym.Space, prefix: str = "") -> Layout:
    """`flatten_sorted`'s layout of ``space``."""
    if isinstance(space, gym.spaces.Dict):
        return [entry for k in sorted(space.spaces) for entry in sorted_layout(space[k], f"{prefix}{k}/")]
    return [[prefix.rstrip("/") or "observation", int(np.prod(space.shape))]]


class Task(gym.Wrapper, abc.ABC):
    """Base of the domain wrappers: each step's reward, termination and success come from
    ``convert``; time-limit truncations pass through untouched.

    Their episodes depend on task state outside the MuJoCo integration state (the maze goal, the
    pen's target, the kitchen's solved subtasks), so a resumed run starts them afresh rather than
    restoring a simulator state that does not match."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "success": self.reset_success(obs)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward, terminated, success = self.convert(obs, reward, terminated, info)
        return obs, reward, terminated, truncated, {**info, "success": success}

    def reset_success(self, obs) -> float:
        return 0.0

    @abc.abstractmethod
    def convert(self, obs, reward: float, terminated: bool, info: dict) -> tuple[float, bool, float]:
        """(reward, terminated, success) of a step, from the env's own values."""


class Domain:
    """Locomotion and any other env: sorted-key dicts, the env's own rewards, data as stored."""

    def prepare(self) -> None:
        """Runs before the env is built."""

    def flatten(self, obs, batched: bool = False) -> np.ndarray:
        return flatten_sorted(obs, batched)

    def layout(self, space: gym.Space) -> Layout:
        """What ``flatten`` makes of an observation of ``space`` (the env's own observation space)."""
        return sorted_layout(space)

    def wrap(self, env: gym.Env, spec: EnvSpec) -> gym.Env:
        return env


class AntMaze(Domain):
    """D4RL's antmaze tasks on Gymnasium-Robotics' AntMaze: fixed start and goal cells, 0/1 reward.

    The suite spec draws D4RL's evaluation map with its rows reversed: Gymnasium-Robotics' y axis
    points up the map where D4RL's points down it, so the reversed map rebuilds D4RL's maze up to
    a translation, ``d4rl_xy_offset`` (where D4RL's origin, the start cell's centre, lies). Minari's
    medium and large ports were recorded in D4RL's map drawn as it is, i.e. D4RL's maze mirrored;
    the ``*-minari`` suite envs are that maze, with D4RL's start and goal cells.
    """

    SUCCESS_RADIUS = 0.5
    """D4RL's goal radius (Gymnasium-Robotics uses 0.45): reward 1 and the episode ends within it."""

    def prepare(self) -> None:
        # v4 on purpose: v5's Ant observation adds contact forces; D4RL's and Minari's data are v4's.
        warnings.filterwarnings("ignore", message=r".*AntMaze_\w+-v4 is out of date", category=DeprecationWarning)

    def flatten(self, obs, batched: bool = False) -> np.ndarray:
        # D4RL's 29 numbers: torso x-y first, then the other 27 (qpos[2:15], qvel[:14]). The goal
        # is left out as in D4RL's evaluation envs and the release: it is fixed per task.
        return np.concatenate([flatten_sorted(obs["achieved_goal"], batched),
                               flatten_sorted(obs["observation"], batched)], axis=-1)

    def layout(self, space: gym.Space) -> Layout:
        return [*sorted_layout(space["achieved_goal"], "achieved_goal/"), *sorted_layout(space["observation"], "observation/")]

    def wrap(self, env: gym.Env, spec: EnvSpec) -> gym.Env:
        goals = len(env.unwrapped.maze.unique_goal_locations)
        if goals != 1:
            # D4RL's observation leaves the goal out, which only a maze with one goal cell allows.
            raise UserError(f"--env {spec.name}: its maze draws the goal from {goals} cells each episode; wsrl's antmaze "
                            f"observation (D4RL's) has no goal in it, so the maze needs one goal cell (a maze_map "
                            f"with one 'g', as the antmaze suite's envs have)")
        return _AntMazeTask(env, self.SUCCESS_RADIUS)


class _AntMazeTask(Task):
    def __init__(self, env: gym.Env, radius: float):
        super().__init__(env)
        self.radius = radius

    def _success(self, obs) -> bool:
        return bool(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]) <= self.radius)

    def reset_success(self, obs) -> float:
        return float(self._success(obs))

    def convert(self, obs, reward, terminated, info):
        # Gymnasium-Robotics' own termination (radius 0.45) always comes with this one.
        success = self._success(obs)
        return float(success), success, float(success)


class Adroit(Domain):
    """Cal-QL's binary adroit tasks: reward -1 until the goal is achieved, 0 on achieving steps.

    Gymnasium-Robotics' AdroitHand envs (dense, or 10 / -0.1 in the *Sparse variants) never end
    an episode; online, it ends at the first step that achieves the goal (the release's
    ``AdroitTerminalWrapper``).
    """

    def wrap(self, env: gym.Env, spec: EnvSpec) -> gym.Env:
        return _AdroitTask(env)


class _AdroitTask(Task):
    def convert(self, obs, reward, terminated, info):
        success = bool(info["success"])
        return 0.0 if success else -1.0, terminated or success, float(success)


class Kitchen(Domain):
    """FrankaKitchen with D4RL's observation and the release's cumulative reward.

    Gymnasium-Robotics rewards each subtask once, on the step it is solved; the release (and
    D4RL's and Minari's kitchen data) rewards the number of subtasks solved so far, and the
    episode ends when all are solved.
    """

    def flatten(self, obs, batched: bool = False) -> np.ndarray:
        # D4RL's 60 numbers: robot joint positions (9), object positions (21), and the 30-number
        # goal (zero except the task's subtasks). Gymnasium-Robotics' observation also holds the
        # velocities (robot qpos 9, robot qvel 9, object qpos 21, object qvel 20); D4RL had none.
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_INDICES

        state = np.asarray(obs["observation"], dtype=np.float32)
        if not batched:
            state = state[None]
        goal = np.zeros((len(state), 30), dtype=np.float32)
        for task, value in obs["desired_goal"].items():
            goal[:, OBS_ELEMENT_INDICES[task]] = np.asarray(value, dtype=np.float32).reshape(-1, len(OBS_ELEMENT_INDICES[task]))
        flat = np.concatenate([state[:, :9], state[:, 18:39], goal], axis=1)
        return flat if batched else flat[0]

    def layout(self, space: gym.Space) -> Layout:
        return [["observation[0:9]", 9], ["observation[18:39]", 21],
                ["desired_goal (each task's values at its OBS_ELEMENT_INDICES, zeros elsewhere)", 30]]

    def prepare(self) -> None:
        _patch_kitchen_joint_reader()

    def wrap(self, env: gym.Env, spec: EnvSpec) -> gym.Env:
        return _KitchenTask(env)


class _KitchenTask(Task):
    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.num_tasks = len(env.unwrapped.goal)

    def convert(self, obs, reward, terminated, info):
        solved = len(info["episode_task_completions"])
        return float(solved), terminated, solved / self.num_tasks


@functools.cache
def _patch_kitchen_joint_reader() -> None:
    """Let FrankaKitchen-v1 run under MuJoCo 4.

    gymnasium-robotics 1.4.2 reads the robot's joints with ``get_joint_qpos``, which asserts
    ``model.jnt_type[j] in (mjtJoint.mjJNT_HINGE, mjtJoint.mjJNT_SLIDE)``. In MuJoCo 4.0 a
    ``mjtJoint`` member compares unequal to a numpy integer from its own side, so the ``in`` test
    fails and the env cannot be built. The kitchen robot reads its observation through
    ``franka_env.robot_get_obs``; this replaces that one function with the same read done on plain
    integers (the Franka's 9 joints are hinges and slides: one qpos and one qvel each).
    """
    import mujoco
    from gymnasium_robotics.envs.franka_kitchen import franka_env

    one_dof = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))

    def robot_get_obs(model, data, joint_names):
        ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name) for name in joint_names if name.startswith("robot")]
        if not all(int(model.jnt_type[j]) in one_dof for j in ids):
            raise RuntimeError("FrankaKitchen: a robot joint is not a hinge or slide joint")
        return data.qpos[model.jnt_qposadr[ids]].copy(), data.qvel[model.jnt_dofadr[ids]].copy()

    franka_env.robot_get_obs = robot_get_obs


DOMAINS: dict[str, Domain] = {"antmaze": AntMaze(), "adroit": Adroit(), "kitchen": Kitchen()}


def domain_of(spec: EnvSpec) -> Domain:
    return DOMAINS.get(spec.domain, Domain())
