"""The one place that reads offline datasets: D4RL-schema HDF5, D4RL names, Minari.

Everything becomes an ``OfflineData`` of transitions with ``terminals`` (the MDP ended:
no bootstrap) kept apart from ``timeouts`` (the episode was cut: bootstrap, but a new
trajectory starts next), then the env's domain maps upstream layouts onto the env
(``wsrl.domains``: antmaze coordinates, adroit's binary reward, kitchen's terminals). Rewards stay
raw here; reward scale/bias are applied once, when the data goes into a replay buffer.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from wsrl.domains import flatten_sorted
from wsrl.errors import UserError

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")
SUCCESS_KEYS = ("infos/success", "infos/goal_achieved")
"""HDF5 columns holding each row's success as its own step reported it (Minari/Gymnasium-Robotics, mj_envs)."""
WSRL_COLLECT_MARK = "metadata/wsrl_version"
"""Written by `wsrl collect` into its HDF5 files: such a file is already in its env's conventions."""
WSRL_COLLECT_ALGORITHM = "wsrl collect"
"""The algorithm name `wsrl collect` gives its Minari datasets, for the same purpose."""
ACTION_TOLERANCE = 1e-3
"""Dataset actions up to this far outside the env's bounds are clipped with a warning; beyond, refused."""


@dataclass
class OfflineData:
    observations: np.ndarray  # float32 [N, obs_dim]
    actions: np.ndarray  # float32 [N, act_dim]
    rewards: np.ndarray  # float32 [N], raw
    next_observations: np.ndarray  # float32 [N, obs_dim]
    terminals: np.ndarray  # bool [N]
    timeouts: np.ndarray  # bool [N]; True on the last kept transition of a cut episode
    success: np.ndarray | None = None  # bool [N]: the step reached the task's goal, when recorded
    layout: str = "d4rl"
    """Whose conventions the rows follow: 'd4rl' (a D4RL-schema file), 'minari' (a Minari dataset)
    or 'wsrl' (written by `wsrl collect` from a wsrl env: nothing to map)."""

    def __len__(self) -> int:
        return len(self.rewards)

    def take(self, rows: np.ndarray) -> OfflineData:
        """The transitions selected by ``rows`` (a boolean mask or indices), in order."""
        cols = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return OfflineData(**{k: v[rows] if isinstance(v, np.ndarray) else v for k, v in cols.items()})

    @property
    def episode_ends(self) -> np.ndarray:
        """Where a trajectory ends: a terminal, a timeout, or the end of the data."""
        ends = self.terminals | self.timeouts
        if len(ends):
            ends[-1] = True
        return ends


def d4rl_dataset_dir() -> Path:
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets"))


def read_d4rl_hdf5(path: Path, max_episode_steps: int | None = None) -> OfflineData:
    """Read a file in D4RL's schema with ``d4rl.qlearning_dataset`` semantics.

    Without ``next_observations``, the next observation is ``observations[i+1]``; a step flagged
    ``timeouts`` is dropped (its successor is the next episode's first observation), and the
    transition before it becomes the cut end of its episode. Files without ``timeouts`` fall back
    to the env's episode length, as D4RL does.
    """
    if not path.is_file():
        raise UserError(f"--dataset {path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in D4RL_REQUIRED if k not in f]
            if missing:
                raise UserError(f"--dataset {path}: missing required key(s) {', '.join(missing)}")
            cols = {k: np.asarray(f[k]) for k in (*D4RL_REQUIRED, "timeouts", "next_observations") if k in f}
            success_key = next((k for k in SUCCESS_KEYS if k in f), None)
            if success_key:
                cols["success"] = np.asarray(f[success_key])
            layout = "wsrl" if WSRL_COLLECT_MARK in f else "d4rl"
    except OSError as e:
        raise UserError(f"--dataset {path}: not a readable HDF5 file ({e})") from None
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise UserError(f"--dataset {path}: columns have different lengths {lengths}")
    n = lengths["rewards"]
    if n < 2:
        raise UserError(f"--dataset {path}: needs at least 2 rows, has {n}")

    obs = _matrix(cols["observations"])
    actions = _matrix(cols["actions"])
    rewards = cols["rewards"].reshape(n).astype(np.float32)
    terminals = cols["terminals"].reshape(n).astype(bool)
    if "timeouts" in cols:
        timeouts = cols["timeouts"].reshape(n).astype(bool)
    elif max_episode_steps:
        timeouts = _timeouts_from_length(terminals, max_episode_steps)
    else:
        timeouts = np.zeros(n, dtype=bool)

    success = cols["success"].reshape(n).astype(bool) if "success" in cols else None
    if "next_observations" in cols:
        return OfflineData(obs, actions, rewards, _matrix(cols["next_observations"]), terminals, timeouts, success, layout)

    keep = ~timeouts[:-1]
    # A kept transition ends its (cut) episode when the following step is a dropped timeout.
    cut = timeouts[1:] & ~terminals[:-1]
    return OfflineData(obs[:-1][keep], actions[:-1][keep], rewards[:-1][keep], obs[1:][keep],
                       terminals[:-1][keep], cut[keep], None if success is None else success[:-1][keep], layout)


def _matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(len(x), -1)


def _timeouts_from_length(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    timeouts = np.zeros(len(terminals), dtype=bool)
    step = 0
    for i, terminal in enumerate(terminals):
        if terminal:
            step = 0
            continue
        step += 1
        if step == max_episode_steps:
            timeouts[i], step = True, 0
    return timeouts


def read_minari(dataset_id: str, download: bool, flatten=flatten_sorted) -> OfflineData:
    """Minari episodes hold T+1 observations and T actions/rewards/terminations/truncations; infos
    (``success``) hold T+1 entries, the first from the reset. ``flatten`` turns dict observations
    into the env's layout."""
    try:
        import minari
    except ImportError:
        raise UserError("--dataset minari:...: needs the 'minari' package (pip install 'wsrl[minari]')") from None
    try:
        dataset = minari.load_dataset(dataset_id, download=download)
    except Exception as e:  # minari raises plain Exceptions/FileNotFoundError for unknown ids
        hint = "" if download else " (add --download to fetch it)"
        raise UserError(f"--dataset minari:{dataset_id}: cannot load ({e}){hint}") from None
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc", "success")}
    for ep in dataset.iterate_episodes():
        obs = _matrix(flatten(ep.observations, batched=True))
        t = len(ep.rewards)
        parts["obs"].append(obs[:-1])
        parts["next"].append(obs[1:])
        parts["act"].append(_matrix(ep.actions))
        parts["rew"].append(np.asarray(ep.rewards, dtype=np.float32).reshape(t))
        term = np.asarray(ep.terminations, dtype=bool).reshape(t)
        trunc = np.asarray(ep.truncations, dtype=bool).reshape(t)
        # An episode stored without a final flag was cut by the collector: mark its end.
        trunc[-1] |= not term[-1]
        parts["term"].append(term)
        parts["trunc"].append(trunc)
        if ep.infos and "success" in ep.infos:
            parts["success"].append(np.asarray(ep.infos["success"], dtype=bool).reshape(-1)[-t:])
    if not parts["rew"]:
        raise UserError(f"--dataset minari:{dataset_id}: holds no episodes")
    cat = {k: np.concatenate(v) for k, v in parts.items() if len(v) == len(parts["rew"])}
    layout = "wsrl" if dataset.storage.metadata.get("algorithm_name") == WSRL_COLLECT_ALGORITHM else "minari"
    return OfflineData(cat["obs"], cat["act"], cat["rew"], cat["next"], cat["term"], cat["trunc"],
                       cat.get("success"), layout)


def validate(data: OfflineData, obs_dim: int, act_dim: int, where: str) -> OfflineData:
    """Refuse data that does not fit the env or is not finite; clip tiny action overshoots."""
    if data.observations.shape[1] != obs_dim:
        raise UserError(f"{where}: observations have size {data.observations.shape[1]}, the env's have {obs_dim}")
    if data.actions.shape[1] != act_dim:
        raise UserError(f"{where}: actions have size {data.actions.shape[1]}, the env's have {act_dim}")
    for name in ("observations", "actions", "rewards", "next_observations"):
        bad = ~np.isfinite(getattr(data, name))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise UserError(f"{where}: {name} contain NaN or Inf (first at row {row})")
    overshoot = float(np.abs(data.actions).max(initial=0.0)) - 1.0
    if overshoot > ACTION_TOLERANCE:
        raise UserError(f"{where}: actions reach {1 + overshoot:.4g}, outside the env's bounds [-1, 1]")
    if overshoot > 0:
        warnings.warn(f"{where}: actions exceed [-1, 1] by up to {overshoot:.2g}; clipped", stacklevel=2)
        np.clip(data.actions, -1.0, 1.0, out=data.actions)
    return data


def returns_to_go(rewards: np.ndarray, episode_ends: np.ndarray, discount: float,
                  sparse_fail_reward: float | None = None) -> np.ndarray:
    """Discounted Monte-Carlo return from each step to the end of its trajectory (Cal-QL's bound).

    ``rewards`` are the scaled rewards the critic is trained on. With ``sparse_fail_reward`` set
    (sparse tasks: the scaled reward of a step that has not succeeded), a trajectory whose every
    reward equals it never succeeded; its return-to-go is the infinite-horizon value r/(1-gamma) at
    every step, as in the Cal-QL release, since the truncated sum would understate how bad staying
    unsuccessful forever is.
    """
    out = np.empty(len(rewards), dtype=np.float32)
    start = 0
    for end in np.flatnonzero(episode_ends):
        r = rewards[start:end + 1]
        if sparse_fail_reward is not None and np.allclose(r, sparse_fail_reward):
            out[start:end + 1] = sparse_fail_reward / (1.0 - discount)
        else:
            acc = 0.0
            for i in range(len(r) - 1, -1, -1):
                acc = r[i] + discount * acc
                out[start + i] = acc
        start = end + 1
    return out
