"""Upstream datasets mapped onto wsrl's envs: read (``wsrl.data.offline``), then adapted to the
conventions of the env's domain (``wsrl.domains``), or refused with a one-line reason.

An adapter works in the raw reward convention of the domain's env wrapper: reward scale and bias
are applied later, once, as the data enters a replay buffer. Data written by ``wsrl collect``
(layout ``wsrl``) comes from the wrapped envs already and is left as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from wsrl.data.offline import OfflineData, d4rl_dataset_dir, read_d4rl_hdf5, read_minari
from wsrl.domains import AntMaze, domain_of
from wsrl.envs import make_env
from wsrl.errors import UserError
from wsrl.specs import EnvSpec, resolve_env

WALL_TOLERANCE = 1e-3
"""Fraction of x-y positions allowed inside walls before an antmaze dataset is refused as another maze's."""


def load_dataset(source: str, spec: EnvSpec, download: bool = False) -> OfflineData:
    """``source``: an HDF5 path, a D4RL name (or '' when --env is one), or ``minari:<id>``;
    returned in the conventions of ``spec``'s env."""
    where = f"--dataset {source or spec.d4rl_name}"
    domain = domain_of(spec)
    if source.startswith("minari:"):
        data = read_minari(source[len("minari:"):], download, domain.flatten)
    elif not source:
        if spec.d4rl_file is None:
            raise UserError("--dataset: no dataset given (an HDF5 file, a D4RL name or minari:<id>)")
        data = _read_d4rl_name(spec)
    elif Path(source).exists() or source.endswith((".hdf5", ".h5")):
        data = read_d4rl_hdf5(Path(source), spec.max_episode_steps)
    else:
        data = _read_d4rl_name(_d4rl_spec(source))
    return ADAPTERS.get(spec.domain, _as_stored)(data, spec, where)


def _read_d4rl_name(spec: EnvSpec) -> OfflineData:
    path = d4rl_dataset_dir() / spec.d4rl_file
    if not path.is_file():
        raise UserError(f"--dataset {spec.d4rl_name}: file not found; download {spec.d4rl_file} "
                        f"from the D4RL release and put it at {path} (or set $D4RL_DATASET_DIR)")
    return read_d4rl_hdf5(path, spec.max_episode_steps)


def _d4rl_spec(name: str) -> EnvSpec:
    spec = resolve_env(name)
    if spec.d4rl_file is None:
        raise UserError(f"--dataset: '{name}' is neither an existing file nor a known D4RL dataset name")
    return spec


def _as_stored(data: OfflineData, spec: EnvSpec, where: str) -> OfflineData:
    return data


def _antmaze(data: OfflineData, spec: EnvSpec, where: str) -> OfflineData:
    maze = _maze(spec)
    if data.layout == "d4rl":
        if spec.d4rl_xy_offset is None:
            raise UserError(f"{where}: {spec.name} has no D4RL maze offset in its suite spec; "
                            f"a D4RL file cannot be placed in this maze")
        offset = np.asarray(spec.d4rl_xy_offset, dtype=np.float32)
        data = dataclasses.replace(data, observations=_shift_xy(data.observations, offset),
                                   next_observations=_shift_xy(data.next_observations, offset))
    inside = _in_walls(maze, data.observations[:, :2]) | _in_walls(maze, data.next_observations[:, :2])
    if inside.mean() > WALL_TOLERANCE:
        frame = f"after D4RL's offset {tuple(spec.d4rl_xy_offset)}" if data.layout == "d4rl" else "as stored"
        raise UserError(f"{where}: {inside.mean():.1%} of the ant's x-y positions ({frame}) lie in walls or "
                        f"outside {spec.name}'s maze; not a dataset of this maze (docs/domains.md lists the env "
                        f"each D4RL file and Minari port needs)")
    if data.layout == "minari":
        # Minari's ports were recorded as continuing tasks towards per-episode goals (radius
        # 0.45). D4RL's files reward the fixed evaluation goal and mark those steps terminal;
        # the Minari rows are relabelled the same way, for the goal cell's centre.
        goal = np.asarray(maze.unique_goal_locations[0], dtype=np.float32)
        success = np.linalg.norm(data.next_observations[:, :2] - goal, axis=1) <= AntMaze.SUCCESS_RADIUS
        data = dataclasses.replace(data, rewards=success.astype(np.float32), terminals=success,
                                   timeouts=data.timeouts & ~success, success=success)
    return data


def _maze(spec: EnvSpec):
    env = make_env(spec)
    maze = env.unwrapped.maze
    env.close()
    return maze


def _shift_xy(obs: np.ndarray, offset: np.ndarray) -> np.ndarray:
    out = obs.copy()
    out[:, :2] += offset
    return out


def _in_walls(maze, xy: np.ndarray) -> np.ndarray:
    """True where an x-y position lies in a wall cell or outside the maze (Gymnasium-Robotics'
    ``cell_xy_to_rowcol``, vectorised)."""
    walls = np.array([[cell == 1 for cell in row] for row in maze.maze_map])
    i = np.floor((maze.y_map_center - xy[:, 1]) / maze.maze_size_scaling).astype(int)
    j = np.floor((xy[:, 0] + maze.x_map_center) / maze.maze_size_scaling).astype(int)
    outside = (i < 0) | (i >= walls.shape[0]) | (j < 0) | (j >= walls.shape[1])
    return outside | walls[i.clip(0, walls.shape[0] - 1), j.clip(0, walls.shape[1] - 1)]


def _adroit(data: OfflineData, spec: EnvSpec, where: str) -> OfflineData:
    """The release's ``adroit_binary_dataset.py`` rules: every achieving step is terminal, each
    trajectory is cut after its last achieving step, trajectories that never achieve it go."""
    if data.layout == "wsrl":
        return data
    if data.success is None:
        raise UserError(f"{where}: adroit's binary reward needs each step's success (Minari's infos/success, "
                        f"or infos/success or infos/goal_achieved in an HDF5 file); this dataset has none. "
                        f"D4RL's adroit files do not record it: use the Minari port (see docs/domains.md)")
    success = data.success.astype(bool)
    keep = np.zeros(len(success), dtype=bool)
    start = 0
    for end in np.flatnonzero(data.episode_ends):
        hits = np.flatnonzero(success[start:end + 1])
        if len(hits):
            keep[start:start + hits[-1] + 1] = True
        start = end + 1
    if not keep.any():
        raise UserError(f"{where}: no trajectory achieves the goal; the binary adroit data keeps only those that do")
    data = dataclasses.replace(data, rewards=np.where(success, 0.0, -1.0).astype(np.float32), terminals=success,
                               timeouts=data.timeouts & ~success)
    return data.take(keep)


def _kitchen(data: OfflineData, spec: EnvSpec, where: str) -> OfflineData:
    if data.layout == "wsrl":
        return data
    # D4RL's kitchen files never set terminals; the release ends an episode at reward 4.
    solved = data.rewards >= len(spec.kwargs["tasks_to_complete"])
    return dataclasses.replace(data, terminals=data.terminals | solved, timeouts=data.timeouts & ~solved)


ADAPTERS: dict[str, Callable[[OfflineData, EnvSpec, str], OfflineData]] = {
    "antmaze": _antmaze, "adroit": _adroit, "kitchen": _kitchen}
"""Per domain, how an upstream dataset becomes data of the domain's env; other domains' data is used as stored."""
