"""What wsrl knows about an env, as plain data: its suite spec (envs/*.json), the names that map
to it (its Gymnasium id, a D4RL dataset name, another id of a suite's env family), and its
normalised score. Nothing here builds an env (wsrl.envs does)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources

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


def normalized_score(spec: EnvSpec, episode_return: float) -> float | None:
    """D4RL-style score x100, or None when the env has no reference scores."""
    if spec.ref_min_score is None or spec.ref_max_score is None:
        return None
    return 100.0 * (episode_return - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score)
