"""Device-resident float32 replay buffer; all UTD minibatches of a step are sampled in one call."""

from __future__ import annotations

import numpy as np
import torch

from wsrl.data.offline import OfflineData, returns_to_go


def scale_rewards(rewards, scale: float, bias: float):
    """What the learner trains on: reward * scale + bias (the suite's per-domain scale and bias).
    Applied once, as a transition enters a buffer; evaluation and logged returns stay unscaled."""
    return rewards * scale + bias


def unscale_rewards(scaled, scale: float, bias: float):
    """The env's own reward back from a buffer's scaled one."""
    return (scaled - bias) / scale


def _columns(obs_dim: int, act_dim: int) -> dict[str, tuple[int, ...]]:
    return {"observations": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_observations": (obs_dim,),
            "masks": (), "mc_returns": ()}


class ReplayBuffer:
    """Fixed capacity, circular. ``masks`` = 1 - terminated; ``mc_returns`` is Cal-QL's bound
    (-inf, i.e. no bound, until the transition's episode has ended and its return is known)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str, seed: int = 0):
        self.capacity, self.device = capacity, torch.device(device)
        self.storage = {k: torch.zeros((capacity, *shape), dtype=torch.float32, device=self.device)
                        for k, shape in _columns(obs_dim, act_dim).items()}
        self.size = 0
        self.ptr = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._finished: torch.Tensor | None = None  # slots whose episode has ended; None = recompute

    def __len__(self) -> int:
        return self.size

    @property
    def bytes_per_transition(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.storage.values())

    def add(self, **columns: np.ndarray | torch.Tensor) -> np.ndarray:
        """Insert a batch of transitions (all columns but ``mc_returns`` required); returns their slots."""
        n = len(columns["rewards"])
        if self.size + n > self.capacity:
            self._finished = None  # finished slots are being overwritten
        slots = (np.arange(n) + self.ptr) % self.capacity
        idx = torch.as_tensor(slots, device=self.device)
        columns.setdefault("mc_returns", np.full(n, -np.inf, dtype=np.float32))
        for k, store in self.storage.items():
            store[idx] = torch.as_tensor(columns[k], dtype=torch.float32).to(self.device).reshape(n, *store.shape[1:])
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return slots

    def sample(self, *shape: int, finished_only: bool = False) -> dict[str, torch.Tensor]:
        """Uniform with replacement; ``finished_only``: among the transitions whose episode has
        ended (Cal-QL's online rule: their Monte-Carlo returns are known)."""
        if not finished_only:
            idx = torch.randint(0, self.size, shape, device=self.device, generator=self.generator)
            return {k: v[idx] for k, v in self.storage.items()}
        if self._finished is None:
            self._finished = torch.isfinite(self.storage["mc_returns"][: self.size]).nonzero()[:, 0]
        if len(self._finished) == 0:
            raise ValueError("no episode has ended yet: nothing to sample with finished_only")
        pick = torch.randint(0, len(self._finished), shape, device=self.device, generator=self.generator)
        idx = self._finished[pick]
        return {k: v[idx] for k, v in self.storage.items()}

    def set_mc_returns(self, slots: np.ndarray, values: np.ndarray) -> None:
        idx = torch.as_tensor(slots, device=self.device)
        self.storage["mc_returns"][idx] = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        self._finished = None

    @staticmethod
    def saved_rows(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The columns of a saved buffer (`state_dict`), oldest row first: a buffer that has wrapped
        around holds its oldest row at its write position."""
        order = np.roll(np.arange(len(state["rewards"])), -int(state["_ptr"]))
        return {k: state[k].numpy()[order] for k in _columns(0, 0)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v[: self.size] for k, v in self.storage.items()}
        state["_ptr"] = torch.tensor(self.ptr)
        state["_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        size = len(state["rewards"])
        if size > self.capacity:
            raise ValueError(f"saved buffer holds {size} transitions, capacity is {self.capacity}")
        for k, store in self.storage.items():
            store[:size] = state[k].to(self.device)
        self.size, self.ptr = size, int(state["_ptr"])
        self._finished = None
        self.set_sampler_state(state["_generator"])

    def set_sampler_state(self, state: torch.Tensor) -> None:
        """CPU and CUDA generators keep differently sized states: a run resumed on the other
        device type re-seeds its sampler (the rest of the run is unaffected)."""
        try:
            self.generator.set_state(state)
        except RuntimeError:
            self.generator.manual_seed(int(state.sum()))
            print("wsrl: replay sampler state is from another device type; re-seeded")

    @classmethod
    def from_offline(cls, data: OfflineData, reward_scale: float, reward_bias: float, discount: float,
                     sparse_fail_reward: float | None, device: torch.device | str, seed: int = 0,
                     capacity: int | None = None) -> ReplayBuffer:
        """The offline data as a buffer, rewards scaled here (once) and returns-to-go computed from
        them (``sparse_fail_reward``: the scaled reward of an unsuccessful step on sparse tasks)."""
        rewards = scale_rewards(data.rewards, reward_scale, reward_bias)
        buf = cls(capacity or len(data), data.observations.shape[1], data.actions.shape[1], device, seed)
        buf.add(observations=data.observations, actions=data.actions, rewards=rewards,
                next_observations=data.next_observations, masks=1.0 - data.terminals.astype(np.float32),
                mc_returns=returns_to_go(rewards, data.episode_ends, discount, sparse_fail_reward))
        return buf


def offline_rows(offline_ratio: float, utd: int, minibatch: int, concatenate: bool) -> int:
    """Offline rows of a whole batch: int(ratio * batch) for a concatenated batch (the release),
    else round(ratio * minibatch) in each of the utd minibatches."""
    return int(offline_ratio * utd * minibatch) if concatenate else round(offline_ratio * minibatch) * utd


def sample_mixed(online: ReplayBuffer, offline: ReplayBuffer | None, utd: int, minibatch: int,
                 offline_ratio: float, finished_only: bool = False, concatenate: bool = False) -> dict[str, torch.Tensor]:
    """[utd, minibatch] transitions; exactly round(offline_ratio * minibatch) of each minibatch
    (so of the whole batch) come from the offline data. ``concatenate`` builds the batch as the
    release does instead: int(offline_ratio * batch) offline rows after the online ones, then split
    into minibatches, so some minibatches are online-only and others offline-only."""
    if concatenate:
        n_offline = offline_rows(offline_ratio, utd, minibatch, True) if offline is not None else 0
        parts = [online.sample(utd * minibatch - n_offline, finished_only=finished_only)]
        if n_offline:
            parts.append(offline.sample(n_offline))
        return {k: torch.cat([p[k] for p in parts]).view(utd, minibatch, *parts[0][k].shape[1:]) for k in parts[0]}
    n_offline = offline_rows(offline_ratio, utd, minibatch, False) // utd if offline is not None else 0
    if n_offline == 0:
        return online.sample(utd, minibatch, finished_only=finished_only)
    if n_offline == minibatch:
        return offline.sample(utd, minibatch)
    off, on = offline.sample(utd, n_offline), online.sample(utd, minibatch - n_offline, finished_only=finished_only)
    return {k: torch.cat([off[k], on[k]], dim=1) for k in on}
