"""Offline datasets in their file formats: the readers (D4RL-schema HDF5, Minari) and the writers
`wsrl collect` uses, side by side, so each format's schema is defined in one module.

A reader returns an ``OfflineData`` of transitions with ``terminals`` (the MDP ended: no
bootstrap) kept apart from ``timeouts`` (the episode was cut: bootstrap, but a new trajectory
starts next). ``wsrl.data.adapt`` then maps upstream layouts onto the env's domain. Rewards stay
raw here; reward scale/bias are applied once, when the data goes into a replay buffer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from wsrl.atomic import atomic_write, fsync, fsync_tree
from wsrl.domains import flatten_sorted
from wsrl.errors import UserError
from wsrl.specs import EnvSpec

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


COLUMNS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@dataclass
class Episodes:
    """Collected rows in D4RL's layout (episodes contiguous) plus per-episode bookkeeping."""

    columns: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in (*COLUMNS, "qpos", "qvel")})
    returns: list[float] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)
    """False for episodes cut because collection stopped."""
    lengths: list[int] = field(default_factory=list)

    def add_episode(self, rows: dict[str, np.ndarray], complete: bool) -> None:
        for k, v in rows.items():
            self.columns[k].append(v)
        self.returns.append(float(rows["rewards"].sum(dtype=np.float64)))
        self.lengths.append(len(rows["rewards"]))
        self.complete.append(complete)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.columns.items() if v}


def write_d4rl(path: Path, data: dict[str, np.ndarray], metadata: dict) -> None:
    """D4RL schema: float32 columns, bool terminals/timeouts, infos/qpos|qvel, metadata/* scalars."""
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key in COLUMNS:
                value = data[key]
                f.create_dataset(key, data=value.astype(bool if key in ("terminals", "timeouts") else np.float32),
                                 compression="gzip", compression_opts=1)
            for key in ("qpos", "qvel"):
                if key in data:
                    f.create_dataset(f"infos/{key}", data=data[key], compression="gzip", compression_opts=1)
            for key, value in metadata.items():
                f[f"metadata/{key}"] = value if isinstance(value, (int, float, bool)) else np.bytes_(
                    value if isinstance(value, str) else json.dumps(value))

    atomic_write(path, write)


def write_minari(dataset_id: str, episodes: Episodes, spec: EnvSpec, venv_spaces, metadata: dict, overwrite: bool) -> Path:
    """Build the dataset in a hidden folder under the Minari root, then rename it into place."""
    try:
        import minari
        from minari.data_collector import EpisodeBuffer
        from minari.storage import get_dataset_path
    except ImportError:
        raise UserError("--format minari: needs the 'minari' package (pip install 'wsrl[minari]')") from None
    try:
        from minari.dataset.minari_dataset import parse_dataset_id

        namespace, _, _ = parse_dataset_id(dataset_id)
    except Exception as e:
        raise UserError(f"--out {dataset_id}: not a Minari dataset id like wsrl/hopper-medium-v0 ({e})") from None
    final = Path(get_dataset_path(dataset_id))
    if final.exists() and not overwrite:
        raise UserError(f"--out {dataset_id}: a Minari dataset with this id exists at {final}; pass --overwrite to replace it")
    root = Path(get_dataset_path())
    tmp_root = root / f".wsrl-tmp-{os.getpid()}"
    obs_space, act_space = venv_spaces
    buffers, start = [], 0
    cols = {k: np.concatenate(v) for k, v in episodes.columns.items() if v}
    for i, length in enumerate(episodes.lengths):
        sl = slice(start, start + length)
        obs = cols["observations"][sl]
        buffers.append(EpisodeBuffer(
            id=i, observations=np.concatenate([obs, cols["next_observations"][sl][-1:]]).astype(obs_space.dtype),
            actions=cols["actions"][sl].astype(act_space.dtype), rewards=list(cols["rewards"][sl].astype(np.float64)),
            terminations=list(cols["terminals"][sl]), truncations=list(cols["timeouts"][sl])))
        start += length
    old = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(tmp_root)
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=spec.id, algorithm_name=WSRL_COLLECT_ALGORITHM, author="wsrl",
            action_space=act_space, observation_space=obs_space, description=json.dumps(metadata),
            ref_min_score=spec.ref_min_score, ref_max_score=spec.ref_max_score if spec.ref_min_score is not None else None)
        built = tmp_root / dataset_id
        fsync_tree(built)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(built, final)
        fsync(final.parent)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final
