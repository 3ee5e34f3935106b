"""Small antmaze, adroit and kitchen datasets in the exact upstream layouts, built locally.

Minari datasets go through Minari's own writer with the dict observations and infos its D4RL ports
hold (minari-dataset-generation-scripts: antmaze observation/achieved_goal/desired_goal with infos
success, qpos, qvel, goal; adroit Box observations with infos success, the reset's first; kitchen
observation plus per-subtask achieved_goal/desired_goal dicts). D4RL files follow D4RL's HDF5
schema: no next_observations, a `timeouts` row closing every episode, infos/* columns.
"""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np

from wsrl.domains import domain_of
from wsrl.specs import resolve_env

ANTMAZE = "antmaze-umaze-v2"
ADROIT = "door-human-v1"
KITCHEN = "kitchen-mixed-v0"


def raw_env(name: str, **overrides) -> gym.Env:
    """The Gymnasium-Robotics env a Minari port was recorded in (no wsrl wrappers)."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    spec = resolve_env(name)
    domain_of(spec).prepare()
    return gym.make(spec.id, **{**spec.kwargs, **overrides})


def write_minari(dataset_id: str, env: gym.Env, episodes: list[dict]):
    from minari import create_dataset_from_buffers
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"], rewards=list(ep["rewards"]),
                             terminations=list(ep["terminations"]), truncations=list(ep["truncations"]),
                             infos=ep.get("infos", {}))
               for i, ep in enumerate(episodes)]
    return create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="local test data",
                                       observation_space=env.observation_space, action_space=env.action_space)


def write_d4rl(path, rows: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f.create_dataset(key, data=value)


def _path_through_umaze(fraction: float, steps: int, rng) -> np.ndarray:
    """x-y positions (Gymnasium-Robotics frame of wsrl's umaze) from the start cell along the
    corridor towards the goal cell, stopping ``fraction`` of the way there for the last fifth."""
    corners = np.array([[-4.0, -4.0], [4.0, -4.0], [4.0, 4.0], [-4.0, 4.0]])
    legs = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    along = np.minimum(np.linspace(0.0, 1.25, steps), 1.0) * fraction * legs.sum()
    leg = np.minimum(np.searchsorted(np.cumsum(legs), along, side="right"), 2)
    start = np.concatenate([[0.0], np.cumsum(legs)])[leg]
    xy = corners[leg] + (corners[leg + 1] - corners[leg]) * ((along - start) / legs[leg])[:, None]
    return xy + rng.uniform(-0.2, 0.2, xy.shape)


def antmaze_episodes(steps: int = 40) -> list[dict]:
    """One episode that walks to the goal and stays there, one that stops half way: T+1 dict
    observations, rewards for each episode's own desired goal with Gymnasium-Robotics' 0.45 radius."""
    rng = np.random.default_rng(0)
    goal = np.array([-4.0, 4.0])
    episodes = []
    for fraction in (1.0, 0.5):
        xy = _path_through_umaze(fraction, steps + 1, rng)
        desired = np.repeat((goal + rng.uniform(-0.3, 0.3, 2))[None], steps + 1, axis=0)
        rest = rng.normal(0.0, 0.3, (steps + 1, 27))
        reached = np.linalg.norm(xy - desired, axis=1) <= 0.45
        episodes.append({
            "observations": {"achieved_goal": xy, "desired_goal": desired, "observation": rest},
            "actions": rng.uniform(-1, 1, (steps, 8)).astype(np.float32), "rewards": reached[1:].astype(float),
            "terminations": np.zeros(steps, bool), "truncations": np.eye(steps, dtype=bool)[-1],
            "infos": {"success": reached, "goal": desired, "qpos": np.concatenate([xy, rest[:, :13]], axis=1),
                      "qvel": rest[:, 13:]}})
    return episodes


def antmaze_d4rl_rows(episodes: list[dict], offset: np.ndarray) -> dict[str, np.ndarray]:
    """The same episodes as D4RL's 29-number rows in D4RL's maze frame (x-y first); rewards and
    terminals for D4RL's fixed goal with radius 0.5; each episode's last row a timeout."""
    d4rl_goal = np.array([0.0, 8.0])
    cols = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "infos/goal", "infos/qpos",
                            "infos/qvel")}
    for ep in episodes:
        xy = ep["observations"]["achieved_goal"] - offset
        obs = np.concatenate([xy, ep["observations"]["observation"]], axis=1)
        t = len(ep["actions"])
        reward = (np.linalg.norm(xy[1:] - d4rl_goal, axis=1) <= 0.5).astype(np.float32)
        cols["observations"].append(obs[:t])
        cols["actions"].append(ep["actions"])
        cols["rewards"].append(reward)
        cols["terminals"].append(reward == 1)
        cols["timeouts"].append(np.eye(t, dtype=bool)[-1])
        cols["infos/goal"].append(np.repeat(d4rl_goal[None], t, axis=0))
        cols["infos/qpos"].append(obs[:t, :15])
        cols["infos/qvel"].append(obs[:t, 15:])
    return {k: np.concatenate(v) for k, v in cols.items()}


def adroit_episodes(steps: int = 30, env_id: str = ADROIT) -> list[dict]:
    """Two door episodes of random actions in the real env; the goal flags are set by hand (random
    actions never open the door): episode 0 achieves it at steps 20-22 and loses it again, as Cal-QL's
    data does, episode 1 never does. infos/success has T+1 entries, the reset's False first."""
    env = raw_env(env_id)
    rng = np.random.default_rng(1)
    episodes = []
    for k in range(2):
        obs = [env.reset(seed=k)[0]]
        actions = rng.uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)
        rewards = []
        for a in actions:
            o, r, *_ = env.step(a)
            obs.append(o)
            rewards.append(r)
        success = np.zeros(steps + 1, bool)
        if k == 0:
            success[21:24] = True  # steps 20, 21, 22 (entry 0 is the reset)
        episodes.append({"observations": np.asarray(obs), "actions": actions, "rewards": np.asarray(rewards),
                         "terminations": np.zeros(steps, bool), "truncations": np.eye(steps, dtype=bool)[-1],
                         "infos": {"success": success}})
    env.close()
    return episodes


def adroit_d4rl_rows(episodes: list[dict], goal_achieved: bool) -> dict[str, np.ndarray]:
    """D4RL's hand_dapg layout (dense rewards, terminals never set, infos/qpos etc.), optionally with
    mj_envs' per-step goal_achieved column (D4RL's own files lack it)."""
    cols = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "infos/qpos",
                            "infos/door_body_pos", "infos/goal_achieved")}
    for ep in episodes:
        t = len(ep["actions"])
        cols["observations"].append(ep["observations"][:t])
        cols["actions"].append(ep["actions"])
        cols["rewards"].append(ep["rewards"])
        cols["terminals"].append(np.zeros(t, bool))
        cols["timeouts"].append(np.eye(t, dtype=bool)[-1])
        cols["infos/qpos"].append(np.zeros((t, 30)))
        cols["infos/door_body_pos"].append(np.zeros((t, 3)))
        cols["infos/goal_achieved"].append(ep["infos"]["success"][1:])
    rows = {k: np.concatenate(v) for k, v in cols.items()}
    if not goal_achieved:
        del rows["infos/goal_achieved"]
    return rows


def kitchen_episodes(steps: int = 12) -> list[dict]:
    """Two kitchen episodes of random actions in the env Minari's kitchen ports were recorded in
    (subtasks never removed, no termination); episode 0's rewards are set by hand to count up to all
    4 subtasks solved at its last two steps."""
    env = raw_env(KITCHEN, remove_task_when_completed=False, terminate_on_tasks_completed=False)
    rng = np.random.default_rng(2)
    episodes = []
    for k in range(2):
        first, _ = env.reset(seed=k)
        obs = [first]
        actions = rng.uniform(-1, 1, (steps, 9)).astype(np.float32)
        for a in actions:
            obs.append(env.step(a)[0])
        rewards = np.zeros(steps)
        if k == 0:
            rewards[-6:] = [1, 1, 2, 3, 4, 4]
        episodes.append({"observations": _stack_dicts(obs), "actions": actions, "rewards": rewards,
                         "terminations": np.zeros(steps, bool), "truncations": np.eye(steps, dtype=bool)[-1]})
    env.close()
    return episodes


def _stack_dicts(items: list):
    if isinstance(items[0], dict):
        return {k: _stack_dicts([x[k] for x in items]) for k in items[0]}
    return np.asarray(items)


def kitchen_d4rl_rows(episodes: list[dict]) -> dict[str, np.ndarray]:
    """D4RL's kitchen rows: robot joint positions (9), object positions (21), then the 30-number goal
    with the mixed task's subtask targets (D4RL's ``_get_task_goal``)."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    goal = np.zeros(30)
    for task in ("microwave", "kettle", "bottom burner", "light switch"):
        goal[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
    cols = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for ep in episodes:
        t = len(ep["actions"])
        state = ep["observations"]["observation"][:t]
        cols["observations"].append(np.concatenate([state[:, :9], state[:, 18:39], np.repeat(goal[None], t, 0)], axis=1))
        cols["actions"].append(ep["actions"])
        cols["rewards"].append(ep["rewards"])
        cols["terminals"].append(np.zeros(t, bool))
        cols["timeouts"].append(np.eye(t, dtype=bool)[-1])
    return {k: np.concatenate(v) for k, v in cols.items()}
