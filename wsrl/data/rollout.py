"""Rollout collection from vectorised envs: WSRL's warmup, online training steps, `wsrl collect`.

Gymnasium 1.x vector envs autoreset on the *next* step: after an env reports terminated or
truncated, its following step only resets it and returns the new first observation. That step
is not a transition and is never handed on.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from wsrl.data.buffer import ReplayBuffer, scale_rewards
from wsrl.data.offline import returns_to_go
from wsrl.domains import Task


@torch.no_grad()
def policy_actions(actor: torch.nn.Module, obs: np.ndarray, device: torch.device, deterministic: bool) -> np.ndarray:
    """One batched forward for all envs; float64 env observations become float32 here. Dropout
    (IQL's actor) is off when acting."""
    was_training = actor.training
    actor.eval()
    actions = actor.act(torch.as_tensor(obs, dtype=torch.float32, device=device), deterministic).cpu().numpy()
    actor.train(was_training)
    return actions


@dataclass
class Transitions:
    """The real transitions of one vector step (autoreset steps removed), raw rewards."""

    env_ids: np.ndarray
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.env_ids)


@dataclass
class Episode:
    """An episode that just ended: its env, its raw return, its length and, for envs that report
    ``info["success"]`` (wsrl.domains), its success: the largest value its steps reported (a goal
    reached at any step counts; a fraction such as kitchen's subtasks/4 counts at its best)."""

    env: int
    episode_return: float
    length: int
    success: float | None


class Collector:
    """Steps a vector env and tracks per-env episode returns and success; knows nothing of policies."""

    def __init__(self, venv: gym.vector.VectorEnv, seed: int | list[int]):
        """``seed``: one for the whole vector env (env i gets seed + i), or one per env."""
        self.venv = venv
        self.num_envs = venv.num_envs
        self.obs, _ = venv.reset(seed=seed)
        self.autoreset = np.zeros(self.num_envs, dtype=bool)
        self.episode_return = np.zeros(self.num_envs)
        self.episode_length = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_success = np.zeros(self.num_envs)

    def step(self, actions: np.ndarray) -> tuple[Transitions, list[Episode]]:
        """Returns this step's transitions and the episodes that just ended."""
        next_obs, rewards, terminated, truncated, info = self.venv.step(actions)
        valid = ~self.autoreset
        ids = np.flatnonzero(valid)
        tr = Transitions(ids, self.obs[valid], actions[valid], rewards[valid].astype(np.float32),
                         next_obs[valid], terminated[valid], truncated[valid])
        self.episode_return[valid] += rewards[valid]
        self.episode_length[valid] += 1
        reports = "success" in info
        if reports:
            # Gymnasium's "_success" mask says which envs reported this step; the others hold a fill value.
            reported = valid & info.get("_success", np.ones(self.num_envs, dtype=bool))
            value = np.asarray(info["success"], dtype=np.float64)
            self.episode_success[reported] = np.maximum(self.episode_success[reported], value[reported])
        ended = valid & (terminated | truncated)
        finished = [Episode(int(i), float(self.episode_return[i]), int(self.episode_length[i]),
                            float(self.episode_success[i]) if reports else None) for i in np.flatnonzero(ended)]
        self.episode_return[ended] = 0.0
        self.episode_length[ended] = 0
        self.episode_success[ended] = 0.0
        self.autoreset = terminated | truncated
        self.obs = next_obs
        return tr, finished

    def state_dict(self) -> dict:
        state = {"obs": self.obs, "autoreset": self.autoreset, "episode_return": self.episode_return,
                 "episode_length": self.episode_length, "episode_success": self.episode_success}
        state["envs"] = [_env_state(env) for env in self.venv.envs]
        return state

    def load_state_dict(self, state: dict) -> bool:
        """Restores episode bookkeeping and, for MuJoCo envs, the simulator state; returns False
        (and starts fresh episodes) when an env's state cannot be restored."""
        env_states = state["envs"]
        if len(env_states) != self.num_envs or not all(env_states):
            return False
        for env, env_state in zip(self.venv.envs, env_states):
            _set_env_state(env, env_state)
        self.obs = np.asarray(state["obs"], dtype=self.obs.dtype)
        self.autoreset = np.asarray(state["autoreset"]).astype(bool)
        self.venv._autoreset_envs = self.autoreset.copy()  # the vector env's own next-step-reset flags
        self.episode_return = np.asarray(state["episode_return"], dtype=np.float64)
        self.episode_length = np.asarray(state["episode_length"], dtype=np.int64)
        # Format-1 checkpoints predate success tracking: their running episodes have reported none.
        self.episode_success = np.asarray(state.get("episode_success", np.zeros(self.num_envs)), dtype=np.float64)
        return True


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = env.env
    return None


def _has_task_wrapper(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, Task):
            return True
        env = env.env
    return False


def _env_state(env: gym.Env) -> dict:
    """Full MuJoCo integration state + RNG + time-limit counter, as arrays and JSON values; empty
    for envs whose episode also depends on task state outside the simulator (wsrl.domains.Task)."""
    import mujoco

    u = env.unwrapped
    if not hasattr(u, "model") or not isinstance(getattr(u, "data", None), mujoco.MjData) or _has_task_wrapper(env):
        return {}
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mj_state = np.empty(mujoco.mj_stateSize(u.model, spec))
    mujoco.mj_getState(u.model, u.data, mj_state, spec)
    limit = _time_limit(env)
    return {"mj_state": mj_state, "elapsed_steps": limit._elapsed_steps if limit else 0,
            "rng": u.np_random.bit_generator.state}


def _set_env_state(env: gym.Env, state: dict) -> None:
    import mujoco

    u = env.unwrapped
    mujoco.mj_setState(u.model, u.data, np.asarray(state["mj_state"], dtype=np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(u.model, u.data)
    u.np_random.bit_generator.state = state["rng"]
    limit = _time_limit(env)
    if limit:
        limit._elapsed_steps = int(state["elapsed_steps"])


class BufferWriter:
    """Puts transitions into a replay buffer: rewards scaled once, mask = 1 - terminated (a
    truncation still bootstraps), and each episode's Monte-Carlo returns filled in when it ends,
    with Cal-QL's sparse rule when ``sparse_fail_reward`` (the scaled reward of an unsuccessful
    step) is given: an episode that never succeeds gets r/(1-gamma) at every step."""

    def __init__(self, buffer: ReplayBuffer, num_envs: int, reward_scale: float, reward_bias: float, discount: float,
                 sparse_fail_reward: float | None = None):
        self.buffer, self.scale, self.bias, self.discount = buffer, reward_scale, reward_bias, discount
        self.sparse_fail_reward = sparse_fail_reward
        self.pending: list[list[tuple[int, float]]] = [[] for _ in range(num_envs)]

    def __call__(self, tr: Transitions) -> None:
        rewards = scale_rewards(tr.rewards, self.scale, self.bias)
        idx = self.buffer.add(observations=tr.observations, actions=tr.actions, rewards=rewards,
                              next_observations=tr.next_observations, masks=1.0 - tr.terminated.astype(np.float32))
        for j, env in enumerate(tr.env_ids):
            self.pending[env].append((int(idx[j]), float(rewards[j])))
            if tr.terminated[j] or tr.truncated[j]:
                slots, rews = zip(*self.pending[env])
                ends = np.zeros(len(rews), dtype=bool)
                ends[-1] = True
                mc = returns_to_go(np.array(rews, dtype=np.float32), ends, self.discount, self.sparse_fail_reward)
                self.buffer.set_mc_returns(np.array(slots), mc)
                self.pending[env] = []

    def state_dict(self) -> dict[str, np.ndarray]:
        rows = [(env, slot, r) for env, items in enumerate(self.pending) for slot, r in items]
        return {"pending": np.array(rows, dtype=np.float64).reshape(-1, 3)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.pending = [[] for _ in self.pending]
        for env, slot, r in np.asarray(state["pending"]).reshape(-1, 3):
            self.pending[int(env)].append((int(slot), float(r)))
