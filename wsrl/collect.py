"""`wsrl collect`: roll out behaviour policies and write the transitions as a dataset.

A source is one of

- ``random``: uniform actions in [-1, 1];
- a shipped policy name (``hopper-medium``; see ``wsrl/policies/``, loaded by ``wsrl.policies``);
- a wsrl run directory or ``checkpoints/step_*`` folder (its actor is used);
- ``replay:RUN_DIR``: the replay buffer of a `wsrl finetune` checkpoint, in insertion order (a
  "medium-replay" style dataset; no env steps are taken).

Several sources with one step count each make a mixture (e.g. medium + expert). Policies act in
``num_envs`` vectorised envs through the shared ``Collector``; transitions are regrouped into whole
episodes so the file has D4RL's row layout (an episode's rows are contiguous, ``terminals`` on a
true termination, ``timeouts`` on a time-limit cut or where collection stopped mid-episode).

The output is written under a temporary name in the destination folder, fsynced and renamed, so an
interrupted collect never leaves a file (or Minari dataset) at the destination.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from wsrl import __version__
from wsrl.config import CollectConfig
from wsrl.data.buffer import ReplayBuffer, unscale_rewards
from wsrl.data.offline import COLUMNS, Episodes, write_d4rl, write_minari
from wsrl.envs import env_dims, make_vector_env
from wsrl.errors import UserError
from wsrl.policies import check_policy_env, load_policy
from wsrl.runtime import resolve_device
from wsrl.specs import EnvSpec, normalized_score, resolve_env

def _mujoco_state(env) -> tuple[np.ndarray, np.ndarray] | None:
    data = getattr(env.unwrapped, "data", None)
    if data is None or not hasattr(data, "qpos") or not hasattr(data, "qvel"):
        return None
    return np.array(data.qpos, dtype=np.float64), np.array(data.qvel, dtype=np.float64)


def rollout(spec: EnvSpec, actor, steps: int, num_envs: int, seed: int, deterministic: bool, noise_std: float,
            device: torch.device, into: Episodes, progress=None) -> None:
    """Take ``steps`` transitions with ``actor`` in ``num_envs`` envs and append them as episodes."""
    from wsrl.data.rollout import Collector, policy_actions

    venv = make_vector_env(spec, num_envs)
    collector = Collector(venv, seed=seed)
    noise = np.random.default_rng(seed + 7)
    has_state = _mujoco_state(venv.envs[0]) is not None
    keys = (*COLUMNS, "qpos", "qvel") if has_state else COLUMNS
    open_rows: list[dict[str, list]] = [{k: [] for k in keys} for _ in range(num_envs)]

    def flush(env: int, complete: bool) -> None:
        rows = open_rows[env]
        if rows["rewards"]:
            into.add_episode({k: np.stack(v) for k, v in rows.items()}, complete)
        open_rows[env] = {k: [] for k in keys}

    taken = 0
    while taken < steps:
        states = [_mujoco_state(env) for env in venv.envs] if has_state else None
        actions = policy_actions(actor, collector.obs, device, deterministic)
        if noise_std > 0:
            actions = np.clip(actions + noise.normal(0.0, noise_std, actions.shape), -1.0, 1.0).astype(np.float32)
        tr, _ = collector.step(actions.astype(np.float32))
        keep = min(len(tr), steps - taken)
        for j in range(keep):
            env = int(tr.env_ids[j])
            rows = open_rows[env]
            rows["observations"].append(tr.observations[j])
            rows["actions"].append(tr.actions[j])
            rows["rewards"].append(tr.rewards[j])
            rows["next_observations"].append(tr.next_observations[j])
            rows["terminals"].append(bool(tr.terminated[j]))
            rows["timeouts"].append(bool(tr.truncated[j] and not tr.terminated[j]))
            if has_state:
                rows["qpos"].append(states[env][0])
                rows["qvel"].append(states[env][1])
            if tr.terminated[j] or tr.truncated[j]:
                flush(env, complete=True)
        taken += keep
        if progress is not None:
            progress(keep)
    venv.close()
    for env in range(num_envs):
        # Collection stopped mid-episode: the last row is a cut, like a time limit.
        if open_rows[env]["rewards"]:
            open_rows[env]["timeouts"][-1] = True
            flush(env, complete=False)


def replay_episodes(run_dir: str, steps: int, spec: EnvSpec, obs_dim: int, act_dim: int, into: Episodes) -> dict:
    """The first ``steps`` transitions a `wsrl finetune` run put in its replay buffer, rewards unscaled.

    The buffer keeps masks (1 - terminated) but not time-limit cuts; with one training env, an
    episode boundary is wherever a transition's next observation is not the following row's
    observation, and those rows become ``timeouts``.
    """
    from wsrl.checkpoint import find_checkpoint, load_checkpoint

    meta, _, state = load_checkpoint(run_dir)
    where = f"--policy replay:{run_dir}"
    if meta["kind"] != "finetune" or "buffer" not in state:
        raise UserError(f"{where}: holds a {meta['kind']} checkpoint; a replay buffer comes from `wsrl finetune`")
    check_policy_env(f"replay:{run_dir}", meta["env_id"], meta["obs_dim"], meta["act_dim"], spec, obs_dim, act_dim)
    cfg = meta["config"]
    if cfg.get("num_envs", 1) != 1:
        raise UserError(f"{where}: was trained with --num-envs {cfg['num_envs']}; episodes can only be recovered "
                        f"from a single-env run")
    col = {k: v[:steps] for k, v in ReplayBuffer.saved_rows(state["buffer"]).items()}
    n = len(col["rewards"])
    terminals = col["masks"] == 0.0
    ends = terminals.copy()
    ends[:-1] |= np.any(col["next_observations"][:-1] != col["observations"][1:], axis=1)
    ends[-1] = True
    timeouts = ends & ~terminals
    rewards = unscale_rewards(col["rewards"], cfg["reward_scale"], cfg["reward_bias"])
    start = 0
    for end in np.flatnonzero(ends):
        sl = slice(start, end + 1)
        into.add_episode({"observations": col["observations"][sl], "actions": col["actions"][sl],
                          "rewards": rewards[sl].astype(np.float32), "next_observations": col["next_observations"][sl],
                          "terminals": terminals[sl], "timeouts": timeouts[sl]},
                         complete=bool(terminals[end]) or end + 1 < n)
        start = end + 1
    return {"kind": "replay", "path": str(find_checkpoint(run_dir)), "transitions": n}


def collect(cfg: CollectConfig) -> dict[str, float]:
    """Everything is checked before any env is stepped; nothing is written until all data is in memory."""

    if not cfg.out:
        raise UserError("--out: no output given (an .hdf5 path, or a Minari dataset id with --format minari)")
    if not cfg.policy:
        raise UserError("--policy: no behaviour source given")
    steps = tuple(cfg.steps) * len(cfg.policy) if len(cfg.steps) == 1 else tuple(cfg.steps)
    if len(steps) != len(cfg.policy):
        raise UserError(f"--steps: give one count per --policy ({len(cfg.policy)}), or one for all; got {len(cfg.steps)}")
    for s in steps:
        if s <= 0:
            raise UserError(f"--steps: must be positive, got {s}")
    if cfg.num_envs <= 0:
        raise UserError(f"--num-envs: must be positive, got {cfg.num_envs}")
    if cfg.noise_std < 0:
        raise UserError(f"--noise-std: must be at least 0, got {cfg.noise_std}")
    if cfg.max_episode_steps < 0:
        raise UserError(f"--max-episode-steps: must be at least 0, got {cfg.max_episode_steps}")
    out = Path(cfg.out)
    if cfg.format == "d4rl":
        if out.suffix not in (".hdf5", ".h5"):
            raise UserError(f"--out {cfg.out}: a D4RL dataset file should end in .hdf5 (or pass --format minari)")
        if out.exists() and not cfg.overwrite:
            raise UserError(f"--out {cfg.out}: exists; pass --overwrite to replace it")
        if out.is_dir():
            raise UserError(f"--out {cfg.out}: is a directory")
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    spec = resolve_env(cfg.env)
    if cfg.max_episode_steps:
        from dataclasses import replace

        spec = replace(spec, max_episode_steps=cfg.max_episode_steps)
    probe = make_vector_env(spec, 1)
    obs_dim, act_dim = env_dims(probe)
    spaces = (probe.single_observation_space, probe.single_action_space)
    probe.close()

    # Load every policy first so a bad --policy fails before minutes of collection.
    sources = []
    for k, source in enumerate(cfg.policy):
        if source.startswith("replay:"):
            run = source[len("replay:"):]
            if not Path(run).exists():
                raise UserError(f"--policy {source}: no such run directory")
            sources.append((source, None, None))
        else:
            actor, desc = load_policy(source, spec, obs_dim, act_dim, device, seed=cfg.seed + k)
            sources.append((source, actor, desc))

    torch.manual_seed(cfg.seed)
    episodes = Episodes()
    described, stats = [], {}
    t0 = time.perf_counter()
    for k, ((source, actor, desc), n) in enumerate(zip(sources, steps)):
        first = len(episodes.returns)
        if actor is None:
            desc = replay_episodes(source[len("replay:"):], n, spec, obs_dim, act_dim, episodes)
        else:
            print(f"wsrl collect: {n} steps from {source} in {cfg.num_envs} envs", flush=True)
            rollout(spec, actor, n, cfg.num_envs, cfg.seed + 100 * k, cfg.deterministic, cfg.noise_std, device, episodes)
        rets = [r for r, c in zip(episodes.returns[first:], episodes.complete[first:]) if c]
        desc = {**desc, "source": source, "steps": n, "episodes": len(episodes.returns) - first,
                "complete_episodes": len(rets), "mean_return": float(np.mean(rets)) if rets else None}
        described.append(desc)
        if rets:
            stats[f"{source}/mean_return"] = float(np.mean(rets))
            score = normalized_score(spec, float(np.mean(rets)))
            if score is not None:
                stats[f"{source}/normalized_score"] = score
    data = episodes.arrays()
    complete = [r for r, c in zip(episodes.returns, episodes.complete) if c]
    metadata = {"wsrl_version": __version__, "env_id": spec.id, "max_episode_steps": spec.max_episode_steps or 0,
                "created_unix": time.time(), "sources": described, "config": asdict(cfg),
                "deterministic": cfg.deterministic, "noise_std": cfg.noise_std, "seed": cfg.seed,
                "num_transitions": len(data["rewards"]), "num_episodes": len(episodes.returns),
                "mean_episode_return": float(np.mean(complete)) if complete else float("nan"),
                "ref_source": spec.ref_source}
    if cfg.format == "d4rl":
        out.parent.mkdir(parents=True, exist_ok=True)
        write_d4rl(out, data, metadata)
        where = str(out)
    else:
        where = str(write_minari(cfg.out, episodes, spec, spaces, metadata, cfg.overwrite))
    print(f"wsrl collect: wrote {len(data['rewards'])} transitions, {len(episodes.returns)} episodes "
          f"({len(complete)} complete) to {where} in {time.perf_counter() - t0:.0f}s", flush=True)
    result = {"transitions": float(len(data["rewards"])), "episodes": float(len(episodes.returns))}
    if complete:
        result["mean_return"] = float(np.mean(complete))
        score = normalized_score(spec, result["mean_return"])
        if score is not None:
            result["normalized_score"] = score
    return {**result, **stats}
