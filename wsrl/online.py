"""`wsrl finetune`: the online loop — warmup, updates, evaluations, checkpoints.

``finetune`` reads top to bottom; the pieces it names live here:

- ``origin`` -> ``Start`` / ``Resume``: where the run begins, the checkpoint read once (by the CLI,
  for its defaults, or here) and checked against the flags;
- ``OnlineState``: everything a resume restores besides the learner (replay buffer, Monte-Carlo
  return writer, env collector, offline data, counters, generators), saved and restored as one pair;
- ``Updates``: the actions of each env step, and the updates owed after it (none before
  ``first_update_step``, critic-first while ``--actor-update-delay`` lasts, then the full update),
  with the learning-rate schedule;
- ``Report``: the log line, evaluation and checkpoint due after each env step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from wsrl.agents import SAC
from wsrl.checkpoint import Checkpoint, list_checkpoints, load_checkpoint
from wsrl.config import FinetuneConfig, NetConfig, to_dict
from wsrl.data.buffer import ReplayBuffer, offline_rows, sample_mixed
from wsrl.data.offline import OfflineData
from wsrl.data.rollout import BufferWriter, Collector, Episode, policy_actions
from wsrl.envs import env_dims, make_vector_env
from wsrl.errors import UserError
from wsrl.fast import make_update
from wsrl.recipes import pretrain_as
from wsrl.runtime import seed_everything, set_rng_state
from wsrl.schedule import LrSchedule
from wsrl.specs import EnvSpec, normalized_score, resolve_env
from wsrl.train import (DivergenceGuard, Loop, build_agent, read_data, setup_device, sparse_fail_reward, start_run,
                        with_env_defaults)


@dataclass(frozen=True)
class Start:
    """A new run, from a pretraining checkpoint or from scratch (None)."""

    checkpoint: Checkpoint | None = None


@dataclass(frozen=True)
class Resume:
    """A fine-tuning run continued from its newest checkpoint."""

    checkpoint: Checkpoint


def origin(cfg: FinetuneConfig, pretrained: Checkpoint | None = None) -> Start | Resume:
    """Where the run begins; a checkpoint that does not fit the flags is one clear error, before
    anything is written. ``pretrained``: ``cfg.checkpoint`` if the caller has read it already."""
    if cfg.resume and list_checkpoints(cfg.resume):
        resumed = load_checkpoint(cfg.resume)
        kind = resumed.meta["kind"]
        if kind != "finetune":
            raise UserError(f"--resume {cfg.resume}: holds a {kind} run; use `wsrl {kind} --resume`")
        return Resume(resumed)
    if cfg.from_scratch:
        if cfg.checkpoint:
            raise UserError("--from-scratch and --checkpoint exclude each other")
        return Start()
    if not cfg.checkpoint:
        raise UserError("--checkpoint: no pretraining run given (or pass --from-scratch)")
    if pretrained is None:
        pretrained = load_checkpoint(cfg.checkpoint)
    meta = pretrained.meta
    trained_as = meta["config"].get("recipe", "wsrl")
    if pretrain_as(cfg.recipe) != trained_as:
        raise UserError(f"--recipe {cfg.recipe}: fine-tunes a {pretrain_as(cfg.recipe) or 'no'} pretraining; the checkpoint "
                        f"{cfg.checkpoint} was pretrained as {trained_as} (to change only the online loss, pass --online-algo)")
    if meta["env_id"] != resolve_env(cfg.env).id:
        raise UserError(f"--env {cfg.env}: the checkpoint {cfg.checkpoint} was trained on {meta['env_id']}")
    saved_net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"]["net"].items()})
    for name, value in to_dict(cfg.net).items():
        if getattr(saved_net, name) != value:
            raise UserError(f"--{name.replace('_', '-')} {value}: does not fit the checkpoint "
                            f"{cfg.checkpoint}, which has {getattr(saved_net, name)}")
    return Start(pretrained)


class OnlineState:
    """The online side of a run: a fresh replay buffer (``writer`` scales rewards and fills in
    Monte-Carlo returns as episodes end), the envs (``collector``), the offline data where a
    baseline keeps it, the warmup's uniform-action generator and the counters."""

    def __init__(self, cfg: FinetuneConfig, venv: gym.vector.VectorEnv, device: torch.device,
                 offline_data: OfflineData | None, fail_reward: float | None) -> None:
        obs_dim, act_dim = env_dims(venv)
        self.buffer = ReplayBuffer(cfg.buffer_capacity, obs_dim, act_dim, device, seed=cfg.seed)
        self.writer = BufferWriter(self.buffer, cfg.num_envs, cfg.reward_scale, cfg.reward_bias, cfg.agent.discount,
                                   fail_reward)
        self.collector = Collector(venv, seed=cfg.seed)
        self.offline = None
        if offline_data is not None:
            self.offline = ReplayBuffer.from_offline(offline_data, cfg.reward_scale, cfg.reward_bias, cfg.agent.discount,
                                                     fail_reward, device, seed=cfg.seed + 1)
        self.uniform = np.random.default_rng(cfg.seed)
        self.counters = {"env_steps": 0, "updates": 0, "episodes": 0}

    @property
    def env_steps(self) -> int:
        return self.counters["env_steps"]

    def append_offline(self) -> None:
        """``--offline-append``: the offline data goes into the online buffer once, at the start."""
        self.buffer.add(**{k: v[: len(self.offline)] for k, v in self.offline.storage.items()})

    def step(self, actions: np.ndarray) -> list[Episode]:
        """One vector-env step into the buffer; returns the episodes that ended."""
        transitions, finished = self.collector.step(actions)
        self.writer(transitions)
        self.counters["env_steps"] += len(transitions)
        self.counters["episodes"] += len(finished)
        return finished

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict(), "writer": self.writer.state_dict(),
                "collector": self.collector.state_dict(), "counters": dict(self.counters),
                "uniform_rng": self.uniform.bit_generator.state,
                **({"offline_sampler": self.offline.generator.get_state()} if self.offline is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.writer.load_state_dict(state["writer"])
        if self.offline is not None:
            self.offline.set_sampler_state(state["offline_sampler"])
        self.uniform.bit_generator.state = state["uniform_rng"]
        self.counters = state["counters"]
        if not self.collector.load_state_dict(state["collector"]):
            print("wsrl: this env's simulator state cannot be restored; the resumed run starts new episodes")


def first_update_step(cfg: FinetuneConfig, spec: EnvSpec) -> int:
    """Updates start after this many env steps: the warmup, and as in the release not before the
    buffer holds one batch of online rows, nor (sampling finished episodes only, Cal-QL) before
    every env has run one time limit, so that each has finished an episode."""
    offline = offline_rows(cfg.offline_ratio, cfg.utd, cfg.batch_size // cfg.utd, cfg.net.concatenated_batches) if cfg.dataset else 0
    online_rows = cfg.batch_size - offline
    start = max(cfg.warmup_steps, online_rows)
    if cfg.sample_finished_episodes:
        time_limit = spec.max_episode_steps or gym.spec(spec.id).max_episode_steps
        if not time_limit:
            raise UserError(f"--sample-finished-episodes: {spec.id} has no time limit, so episodes may never end")
        start = max(start, time_limit * cfg.num_envs)
    return start


class Updates:
    """The learner's side of each env step: its actions, then one update (``--utd`` critic steps
    and one actor step) per env step once the warmup is over."""

    def __init__(self, agent: SAC, cfg: FinetuneConfig, device: torch.device, online: OnlineState, start: int):
        """``start``: the env step after which updates begin (`first_update_step`)."""
        self.agent, self.cfg, self.device, self.online = agent, cfg, device, online
        self.update = make_update(agent, cfg, device)
        # Critic first (--actor-update-delay): its own update function, chosen here by the host's
        # counter, so neither kind of update holds a data-dependent branch (compile, CUDA graphs).
        self.critic_first = (make_update(agent, cfg, device, train_actor=False)
                             if cfg.actor_update_delay > online.counters["updates"] else None)
        self.start = start
        self.schedule = LrSchedule(cfg, agent.optimizers, agent.base_lrs, total_updates=max(1, cfg.steps - self.start))
        self.uniform_warmup = cfg.warmup_actions == "uniform" or (cfg.warmup_actions is None and cfg.from_scratch)
        self.metrics: dict[str, torch.Tensor] = {}

    def actions(self) -> np.ndarray:
        """The warmup's actions (the frozen pretrained policy's samples, or uniform ones from
        scratch), then the learning policy's samples."""
        if self.online.env_steps < self.cfg.warmup_steps and self.uniform_warmup:
            return self.online.uniform.uniform(-1.0, 1.0, size=(self.cfg.num_envs, self.agent.model.act_dim)).astype(np.float32)
        return policy_actions(self.agent.model.actor, self.online.collector.obs, self.device, deterministic=False)

    def after(self, before: int, guard: DivergenceGuard) -> None:
        """The updates owed for the env steps from ``before`` to now."""
        counters, minibatch = self.online.counters, self.cfg.batch_size // self.cfg.utd
        for _ in range(max(0, counters["env_steps"] - max(before, self.start))):
            self.schedule.apply(counters["updates"])
            step_fn = self.critic_first if counters["updates"] < self.cfg.actor_update_delay else self.update
            self.metrics = step_fn(sample_mixed(self.online.buffer, self.online.offline, self.cfg.utd, minibatch,
                                                self.cfg.offline_ratio, self.cfg.sample_finished_episodes,
                                                concatenate=self.cfg.net.concatenated_batches))
            counters["updates"] += 1
            guard.track(self.metrics, counters["env_steps"])  # reported as the env step


def episode_metrics(spec: EnvSpec, episode: Episode) -> dict[str, float]:
    """``train/*`` of one finished training episode (raw returns, as evaluation's)."""
    metrics = {"train/episode_return": episode.episode_return, "train/episode_length": float(episode.length)}
    score = normalized_score(spec, episode.episode_return)
    if score is not None:
        metrics["train/normalized_score"] = score
    if episode.success is not None:
        metrics["train/success"] = episode.success
    return metrics


class Report:
    """After each env step: the log line, the evaluation and the checkpoint that are due."""

    def __init__(self, loop: Loop, cfg: FinetuneConfig, online: OnlineState):
        self.loop, self.cfg, self.online = loop, cfg, online
        self.t_log, self.steps_at_log, self.updates_at_log = time.perf_counter(), online.env_steps, online.counters["updates"]

    def __call__(self, before: int, metrics: dict[str, torch.Tensor]) -> None:
        loop, cfg, counters, now = self.loop, self.cfg, self.online.counters, self.online.env_steps
        if loop.crossed(cfg.log_every, before, now) or now >= cfg.steps:
            t = time.perf_counter()
            extra = {"perf/env_steps_per_s": (now - self.steps_at_log) / (t - self.t_log),
                     "perf/updates_per_s": (counters["updates"] - self.updates_at_log) / (t - self.t_log),
                     "buffer/size": float(len(self.online.buffer)),
                     "train/warmup_progress": min(1.0, now / max(1, cfg.warmup_steps)),
                     "train/updates": float(counters["updates"])}
            loop.log_metrics(now, metrics, extra, "online")
            self.t_log, self.steps_at_log, self.updates_at_log = t, now, counters["updates"]
        if loop.crossed(cfg.eval_every, before, now) or now >= cfg.steps:
            loop.evaluate(now, "online")
        if loop.crossed(cfg.save_every, before, now) or now >= cfg.steps:
            loop.save(now, self.online.state_dict())
            self.t_log = time.perf_counter()  # writing the checkpoint is not training time
        loop.logger.progress(now - before, **({"eval": loop.last_eval["eval/return"]} if loop.last_eval else {}))


def finetune(cfg: FinetuneConfig, pretrained: Checkpoint | None = None) -> dict[str, float]:
    """``pretrained``: ``cfg.checkpoint`` already read (`wsrl.checkpoint.load_checkpoint`; the CLI
    reads it for its defaults), so that it is read once; None reads it here."""
    cfg.check()
    device, cfg = setup_device(cfg)
    begin = origin(cfg, pretrained)
    loaded = begin.checkpoint
    spec = resolve_env(cfg.env)
    cfg = with_env_defaults(cfg, spec)
    fail_reward, update_start = sparse_fail_reward(cfg, spec), first_update_step(cfg, spec)  # checks, before writing
    venv = make_vector_env(spec, cfg.num_envs)
    obs_dim, act_dim = env_dims(venv)
    if loaded is not None and (loaded.meta["obs_dim"], loaded.meta["act_dim"]) != (obs_dim, act_dim):
        raise UserError(f"checkpoint: trained with obs/action sizes {loaded.meta['obs_dim']}/{loaded.meta['act_dim']}, "
                        f"{spec.id} has {obs_dim}/{act_dim}")
    data = read_data(cfg, spec, obs_dim, act_dim) if cfg.dataset else None
    seed_everything(cfg.seed)
    agent = build_agent(cfg, cfg.net, cfg.online_algo, obs_dim, act_dim, device)
    online = OnlineState(cfg, venv, device, data, fail_reward)
    if loaded is not None:
        agent.load_state_dict(loaded.model_state, loaded.state, f"checkpoint {cfg.resume or cfg.checkpoint}",
                              resume=isinstance(begin, Resume))
    if isinstance(begin, Resume):
        set_rng_state(loaded.state["rng"])
        online.load_state_dict(loaded.state)
    elif cfg.offline_append and online.offline is not None:
        online.append_offline()
    loop = Loop(cfg, spec, agent, device, *start_run(cfg, "finetune", spec, cfg.online_algo, obs_dim, act_dim, device,
                                                     cfg.steps, online.env_steps, pretrain_checkpoint=cfg.checkpoint))
    updates = Updates(agent, cfg, device, online, update_start)
    if online.env_steps == 0:
        loop.evaluate(0, "online")  # the pretrained starting point is the first point on the curve
    report = Report(loop, cfg, online)
    while online.env_steps < cfg.steps:
        before = online.env_steps
        for episode in online.step(updates.actions()):  # the warmup's actions, then the learning policy's
            loop.logger.log(online.env_steps, episode_metrics(spec, episode), "online")
        updates.after(before, loop.guard)  # one update per env step once the warmup is over
        report(before, updates.metrics)  # log, evaluate, save when due
    loop.logger.close()
    venv.close()
    return loop.last_eval
