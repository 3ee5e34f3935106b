"""The offline loop (`wsrl pretrain`) and the online loop (`wsrl finetune`: warmup -> updates).

Data flows one way: dataset -> agent -> checkpoint -> fine-tuning. Everything a user can get
wrong (env, dataset, checkpoint, device, run directory) is checked before anything is written.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from wsrl import __version__
from wsrl.agents import AGENTS, SAC
from wsrl.checkpoint import list_checkpoints, load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint
from wsrl.config import FinetuneConfig, NetConfig, PretrainConfig, RunConfig, to_dict
from wsrl.data.buffer import ReplayBuffer, offline_rows, sample_mixed, scale_rewards
from wsrl.data.offline import OfflineData, validate
from wsrl.data.adapt import load_dataset
from wsrl.data.rollout import BufferWriter, Collector, policy_actions
from wsrl.envs import env_dims, make_env, make_vector_env
from wsrl.specs import EnvSpec, normalized_score, resolve_env
from wsrl.errors import DivergenceError, UserError
from wsrl.evaluate import evaluate
from wsrl.fast import configure_cpu, make_update
from wsrl.logs import RunLogger, check_wandb
from wsrl.nets import ActorCritic, set_precision
from wsrl.precision import effective_precision
from wsrl.recipes import pretrain_as, pretraining_owner
from wsrl.runtime import resolve_device, rng_state, seed_everything, set_rng_state
from wsrl.schedule import LrSchedule, check_schedule


def setup_device(cfg: RunConfig) -> tuple[torch.device, RunConfig]:
    """The run's device, its CPU threads set before anything computes (so every run uses the same
    threads), and the config with the precision that will run there (saved in config.json)."""
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        configure_cpu(cfg.threads)
    return device, replace(cfg, precision=effective_precision(cfg.precision, device))


def check_positive(**values: int) -> None:
    for flag, value in values.items():
        if value <= 0:
            raise UserError(f"--{flag.replace('_', '-')}: must be positive, got {value}")


def prepare_run_dir(out: str, overwrite: bool, resume: bool) -> Path:
    """Refuse to mix two runs in one folder. Call only after all input is validated."""
    if not out:
        raise UserError("--out: no run directory given")
    run_dir = Path(out)
    if resume:
        return run_dir
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not overwrite:
            what = "a run" if (run_dir / "config.json").exists() else "other files"
            raise UserError(f"--out {run_dir}: already holds {what}; pass --resume {run_dir} to continue it "
                            f"or --overwrite to replace it")
        shutil.rmtree(run_dir) if run_dir.is_dir() else run_dir.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def with_env_defaults(cfg: RunConfig, spec: EnvSpec) -> RunConfig:
    """Fill the fields left to the env suite (reward scale/bias, sparse reward)."""
    cfg = replace(cfg, reward_scale=spec.reward_scale if cfg.reward_scale is None else cfg.reward_scale,
                  reward_bias=spec.reward_bias if cfg.reward_bias is None else cfg.reward_bias)
    if cfg.agent.sparse_reward is None:
        cfg = replace(cfg, agent=replace(cfg.agent, sparse_reward=spec.sparse_reward))
    return cfg


def sparse_fail_reward(cfg: RunConfig, spec: EnvSpec) -> float | None:
    """The scaled reward of an unsuccessful step, which Cal-QL's sparse return rule looks for."""
    if not cfg.agent.sparse_reward:
        return None
    if spec.fail_reward is None:
        raise UserError(f"--sparse-reward: {spec.name}'s suite spec gives no reward of an unsuccessful step "
                        f"(fail_reward in envs/*.json), so failing episodes cannot be recognised")
    return scale_rewards(spec.fail_reward, cfg.reward_scale, cfg.reward_bias)


class DivergenceGuard:
    """Remembers, on the device and without a host sync, the first step at which each loss was
    NaN/Inf; ``check`` (called at log and save time) raises with that step, or names the first
    non-finite parameter (a NaN gradient shows up there after the optimizer step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad: dict[str, torch.Tensor] = {}

    def track(self, metrics: dict[str, torch.Tensor], step: int) -> None:
        self.step.fill_(step)
        for key, value in metrics.items():
            if key.startswith("losses/"):
                first = self.first_bad.setdefault(key, torch.full((), -1, dtype=torch.long, device=self.device))
                first.copy_(torch.where((first < 0) & ~torch.isfinite(value), self.step, first))

    def check(self, model: torch.nn.Module, step: int) -> None:
        for key, first in self.first_bad.items():
            if int(first) >= 0:
                raise DivergenceError(f"{key} became NaN or Inf at step {int(first)}")
        for name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(f"parameter {name} became NaN or Inf (found at step {step})")


def build_agent(cfg: RunConfig, net: NetConfig, algo: str, obs_dim: int, act_dim: int, device: torch.device) -> SAC:
    model = ActorCritic(obs_dim, act_dim, net, cfg.agent.init_temperature, cfg.agent.cql_alpha).to(device)
    set_precision(model, cfg.precision)
    return AGENTS[algo](model, cfg.agent, net)


def load_learner_state(agent: SAC, model_state: dict, state: dict, where: str, resume: bool = False) -> None:
    """Weights and all optimizer states; shape mismatches become one clear error. The learning
    rates stay this run's lr tensors (a compiled or captured update reads those): a run started
    from another's checkpoint keeps its own values, a resumed run (``resume``) takes the saved
    ones, where its schedule stood."""
    own = agent.model.state_dict()
    for key, value in model_state.items():
        if key not in own:
            raise UserError(f"{where}: unexpected weight '{key}' (not a wsrl model of this version)")
        if own[key].shape != value.shape:
            raise UserError(f"{where}: weight '{key}' has shape {tuple(value.shape)}, this config needs "
                            f"{tuple(own[key].shape)}")
    missing = sorted(set(own) - set(model_state))
    if missing:
        raise UserError(f"{where}: missing weight(s) {', '.join(missing[:3])}")
    agent.model.load_state_dict(model_state)
    for name, opt in agent.optimizers.items():
        lrs = [g["lr"] for g in opt.param_groups]
        load_optimizer_state(opt, state["optimizers"][name])
        for group, lr in zip(opt.param_groups, lrs):
            if resume:
                lr.copy_(torch.as_tensor(group["lr"]))
            group["lr"] = lr


def learner_state(agent: SAC) -> dict:
    return {"optimizers": {name: optimizer_state(opt) for name, opt in agent.optimizers.items()},
            "rng": rng_state()}


def read_data(cfg: RunConfig, spec: EnvSpec, obs_dim: int, act_dim: int) -> OfflineData:
    where = f"--dataset {cfg.dataset or spec.d4rl_name}"
    return validate(load_dataset(cfg.dataset, spec, cfg.download), obs_dim, act_dim, where)


@dataclass
class Loop:
    """What both loops share: logging cadence, evaluation, checkpointing, the divergence guard."""

    cfg: RunConfig
    run_dir: Path
    spec: EnvSpec
    agent: SAC
    device: torch.device
    meta: dict
    logger: RunLogger
    guard: DivergenceGuard = field(init=False)

    def __post_init__(self):
        self.guard = DivergenceGuard(self.device)
        self.last_eval: dict[str, float] = {}

    def crossed(self, every: int, before: int, now: int) -> bool:
        return now // every > before // every

    def evaluate(self, step: int, phase: str) -> dict[str, float]:
        t = time.perf_counter()
        metrics = evaluate(self.agent.model.actor, self.spec, self.cfg.eval_episodes, self.cfg.seed, step, self.device)
        metrics["perf/eval_seconds"] = time.perf_counter() - t
        self.logger.log(step, metrics, phase)
        self.last_eval = metrics
        return metrics

    def log_metrics(self, step: int, metrics: dict[str, torch.Tensor], extra: dict[str, float], phase: str) -> None:
        self.guard.check(self.agent.model, step)
        values = {k: float(v) for k, v in metrics.items()}
        for name in ("actor", "critic"):  # the lrs of the last update (scheduled or not)
            values[f"train/lr_{name}"] = float(self.agent.optimizers[name].param_groups[0]["lr"])
        self.logger.log(step, {**values, **extra}, phase)

    def save(self, step: int, state: dict) -> Path:
        self.guard.check(self.agent.model, step)
        return save_checkpoint(self.run_dir, step, self.meta, self.agent.model.state_dict(),
                               {**learner_state(self.agent), **state}, self.cfg.keep_checkpoints)


def _start(cfg: RunConfig, kind: str, spec: EnvSpec, algo: str, obs_dim: int, act_dim: int, device: torch.device,
           total: int, resume_step: int) -> tuple[Path, dict, RunLogger]:
    run_dir = prepare_run_dir(cfg.out, cfg.overwrite, resume=bool(cfg.resume))
    config = {"kind": kind, **to_dict(cfg)}
    logger = RunLogger(run_dir, total, resume_step, f"{kind} {algo} {spec.id}", config)  # writes config.json
    meta = {"kind": kind, "wsrl_version": __version__, "env": cfg.env, "env_id": spec.id, "algo": algo,
            "dataset": getattr(cfg, "dataset", ""), "obs_dim": obs_dim, "act_dim": act_dim, "config": config}
    return run_dir, meta, logger


def pretrain(cfg: PretrainConfig) -> dict[str, float]:
    check_positive(steps=cfg.steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                   eval_episodes=cfg.eval_episodes, log_every=cfg.log_every, save_every=cfg.save_every)
    check_wandb(cfg)
    if cfg.bc_steps < 0:
        raise UserError(f"--bc-steps: must be >= 0, got {cfg.bc_steps}")
    if cfg.bc_steps and cfg.algo == "iql":
        raise UserError("--bc-steps: applies to cql and calql; IQL's actor already is advantage-weighted behaviour cloning")
    check_schedule(cfg)
    cfg = replace(cfg, recipe=pretraining_owner(cfg.recipe))  # e.g. wsrl-no-warmup pretrains, and is recorded, as wsrl
    device, cfg = setup_device(cfg)
    spec = resolve_env(cfg.env)
    cfg = with_env_defaults(cfg, spec)
    fail_reward = sparse_fail_reward(cfg, spec)
    obs_dim, act_dim = env_dims(make_env(spec))
    data = read_data(cfg, spec, obs_dim, act_dim)
    seed_everything(cfg.seed)
    agent = build_agent(cfg, cfg.net, cfg.algo, obs_dim, act_dim, device)
    buffer = ReplayBuffer.from_offline(data, cfg.reward_scale, cfg.reward_bias, cfg.agent.discount,
                                       fail_reward, device, seed=cfg.seed)
    start = 0
    if cfg.resume and list_checkpoints(cfg.resume):
        meta, model_state, state = load_checkpoint(cfg.resume)
        if meta["kind"] != "pretrain":
            raise UserError(f"--resume {cfg.resume}: holds a {meta['kind']} run; use `wsrl {meta['kind']} --resume`")
        load_learner_state(agent, model_state, state, f"--resume {cfg.resume}", resume=True)
        buffer.set_sampler_state(state["sampler"])
        set_rng_state(state["rng"])
        start = meta["step"]

    run_dir, meta, logger = _start(cfg, "pretrain", spec, cfg.algo, obs_dim, act_dim, device, cfg.steps, start)
    loop = Loop(cfg, run_dir, spec, agent, device, meta, logger)
    update = make_update(agent, cfg, device)
    bc_update = make_update(agent, cfg, device, behavior_cloning=True) if cfg.bc_steps > start else None
    schedule = LrSchedule(cfg, agent.optimizers, agent.base_lrs, total_updates=cfg.steps)
    t_log = time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        schedule.apply(step - 1)
        metrics = (bc_update if step <= cfg.bc_steps else update)(buffer.sample(1, cfg.batch_size))
        loop.guard.track(metrics, step)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            rate = (step - max(start, step - cfg.log_every)) / (now - t_log)
            loop.log_metrics(step, metrics, {"perf/updates_per_s": rate}, "offline")
            logger.progress(0, critic_loss=float(metrics["losses/critic_loss"]))
            t_log = now
        if step % cfg.eval_every == 0 or step == cfg.steps:
            loop.evaluate(step, "offline")
        if step % cfg.save_every == 0 or step == cfg.steps:
            loop.save(step, {"sampler": buffer.generator.get_state()})
            t_log = time.perf_counter()
        logger.progress(1)
    logger.close()
    return loop.last_eval


def _finetune_inputs(cfg: FinetuneConfig):
    """Checkpoint, env and config checks for `wsrl finetune`, before anything is written."""
    if cfg.resume and list_checkpoints(cfg.resume):
        meta, model_state, state = load_checkpoint(cfg.resume)
        if meta["kind"] != "finetune":
            raise UserError(f"--resume {cfg.resume}: holds a {meta['kind']} run; use `wsrl {meta['kind']} --resume`")
        return meta, model_state, state
    if cfg.from_scratch:
        if cfg.checkpoint:
            raise UserError("--from-scratch and --checkpoint exclude each other")
        return None, None, None
    if not cfg.checkpoint:
        raise UserError("--checkpoint: no pretraining run given (or pass --from-scratch)")
    meta, model_state, state = load_checkpoint(cfg.checkpoint)
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
    return meta, model_state, state


def first_update_step(cfg: FinetuneConfig, spec: EnvSpec) -> int:
    """Updates start after this many env steps: the warmup, and as in the release not before the
    buffer holds one batch of online rows, nor (sampling finished episodes only, Cal-QL) before
    every env has run one time limit, so that each has finished an episode."""
    offline = offline_rows(cfg.offline_ratio, cfg.utd, cfg.batch_size // cfg.utd, cfg.net.release_exact) if cfg.dataset else 0
    online_rows = cfg.batch_size - offline
    start = max(cfg.warmup_steps, online_rows)
    if cfg.sample_finished_episodes:
        time_limit = spec.max_episode_steps or gym.spec(spec.id).max_episode_steps
        if not time_limit:
            raise UserError(f"--sample-finished-episodes: {spec.id} has no time limit, so episodes may never end")
        start = max(start, time_limit * cfg.num_envs)
    return start


def finetune(cfg: FinetuneConfig) -> dict[str, float]:
    check_positive(steps=cfg.steps, utd=cfg.utd, batch_size=cfg.batch_size, num_envs=cfg.num_envs,
                   buffer_capacity=cfg.buffer_capacity, eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes,
                   log_every=cfg.log_every, save_every=cfg.save_every)
    check_wandb(cfg)
    if cfg.warmup_steps < 0 or cfg.warmup_steps >= cfg.steps:
        raise UserError(f"--warmup-steps {cfg.warmup_steps}: must be at least 0 and less than --steps {cfg.steps}")
    if cfg.batch_size % cfg.utd:
        raise UserError(f"--batch-size {cfg.batch_size}: must be divisible by --utd {cfg.utd}")
    if not 0.0 <= cfg.offline_ratio <= 1.0:
        raise UserError(f"--offline-ratio {cfg.offline_ratio}: must be in [0, 1]")
    if (cfg.offline_ratio > 0 or cfg.offline_append) and not cfg.dataset:
        raise UserError("--offline-ratio/--offline-append: need --dataset")
    if cfg.actor_update_delay < 0:
        raise UserError(f"--actor-update-delay {cfg.actor_update_delay}: must be at least 0")
    check_schedule(cfg)
    device, cfg = setup_device(cfg)
    meta, model_state, state = _finetune_inputs(cfg)
    spec = resolve_env(cfg.env)
    cfg = with_env_defaults(cfg, spec)
    fail_reward = sparse_fail_reward(cfg, spec)
    venv = make_vector_env(spec, cfg.num_envs)
    obs_dim, act_dim = env_dims(venv)
    if meta is not None and (meta["obs_dim"], meta["act_dim"]) != (obs_dim, act_dim):
        raise UserError(f"checkpoint: trained with obs/action sizes {meta['obs_dim']}/{meta['act_dim']}, "
                        f"{spec.id} has {obs_dim}/{act_dim}")
    data = read_data(cfg, spec, obs_dim, act_dim) if cfg.dataset else None

    seed_everything(cfg.seed)
    agent = build_agent(cfg, cfg.net, cfg.online_algo, obs_dim, act_dim, device)
    if model_state is not None:
        load_learner_state(agent, model_state, state, f"checkpoint {cfg.resume or cfg.checkpoint}",
                           resume=meta["kind"] == "finetune")
    buffer = ReplayBuffer(cfg.buffer_capacity, obs_dim, act_dim, device, seed=cfg.seed)
    writer = BufferWriter(buffer, cfg.num_envs, cfg.reward_scale, cfg.reward_bias, cfg.agent.discount, fail_reward)
    collector = Collector(venv, seed=cfg.seed)
    offline = None
    if data is not None:
        offline = ReplayBuffer.from_offline(data, cfg.reward_scale, cfg.reward_bias, cfg.agent.discount,
                                            fail_reward, device, seed=cfg.seed + 1)
    uniform = np.random.default_rng(cfg.seed)
    counters = {"env_steps": 0, "updates": 0, "episodes": 0}
    if meta is not None and meta["kind"] == "finetune":
        set_rng_state(state["rng"])
        buffer.load_state_dict(state["buffer"])
        writer.load_state_dict(state["writer"])
        if offline is not None:
            offline.set_sampler_state(state["offline_sampler"])
        uniform.bit_generator.state = state["uniform_rng"]
        counters = state["counters"]
        if not collector.load_state_dict(state["collector"]):
            print("wsrl: this env's simulator state cannot be restored; the resumed run starts new episodes")
    elif cfg.offline_append and offline is not None:
        buffer.add(**{k: v[: len(offline)] for k, v in offline.storage.items()})

    run_dir, meta_out, logger = _start(cfg, "finetune", spec, cfg.online_algo, obs_dim, act_dim, device,
                                       cfg.steps, counters["env_steps"])
    meta_out["pretrain_checkpoint"] = cfg.checkpoint
    loop = Loop(cfg, run_dir, spec, agent, device, meta_out, logger)
    update = make_update(agent, cfg, device)
    # Critic first (--actor-update-delay): its own update function, chosen here by the host's
    # counter, so neither kind of update holds a data-dependent branch (compile, CUDA graphs).
    critic_first = (make_update(agent, cfg, device, train_actor=False)
                    if cfg.actor_update_delay > counters["updates"] else None)
    actor = agent.model.actor
    minibatch = cfg.batch_size // cfg.utd
    update_start = first_update_step(cfg, spec)
    schedule = LrSchedule(cfg, agent.optimizers, agent.base_lrs, total_updates=max(1, cfg.steps - update_start))
    uniform_warmup = cfg.warmup_actions == "uniform" or (cfg.warmup_actions is None and cfg.from_scratch)

    def save(step: int) -> None:
        loop.save(step, {"buffer": buffer.state_dict(), "writer": writer.state_dict(),
                         "collector": collector.state_dict(), "counters": dict(counters),
                         "uniform_rng": uniform.bit_generator.state,
                         **({"offline_sampler": offline.generator.get_state()} if offline is not None else {})})

    if counters["env_steps"] == 0:
        loop.evaluate(0, "online")  # the pretrained starting point is the first point on the curve
    t_log, steps_at_log, updates_at_log = time.perf_counter(), counters["env_steps"], counters["updates"]
    metrics: dict[str, torch.Tensor] = {}
    while counters["env_steps"] < cfg.steps:
        before = counters["env_steps"]
        in_warmup = before < cfg.warmup_steps
        if in_warmup and uniform_warmup:
            actions = uniform.uniform(-1.0, 1.0, size=(cfg.num_envs, act_dim)).astype(np.float32)
        else:
            actions = policy_actions(actor, collector.obs, device, deterministic=False)
        transitions, finished = collector.step(actions)
        writer(transitions)
        counters["env_steps"] += len(transitions)
        now = counters["env_steps"]
        for episode in finished:
            counters["episodes"] += 1
            ep = {"train/episode_return": episode.episode_return, "train/episode_length": float(episode.length)}
            score = normalized_score(spec, episode.episode_return)
            if score is not None:
                ep["train/normalized_score"] = score
            if episode.success is not None:
                ep["train/success"] = episode.success
            logger.log(now, ep, "online")
        # One update (utd critic steps + one actor step) per env step after the warmup.
        for _ in range(max(0, now - max(before, update_start))):
            schedule.apply(counters["updates"])
            step_fn = critic_first if counters["updates"] < cfg.actor_update_delay else update
            metrics = step_fn(sample_mixed(buffer, offline, cfg.utd, minibatch, cfg.offline_ratio,
                                           cfg.sample_finished_episodes, concatenate=cfg.net.release_exact))
            counters["updates"] += 1
            loop.guard.track(metrics, now)  # reported as the env step
        if loop.crossed(cfg.log_every, before, now) or now >= cfg.steps:
            t = time.perf_counter()
            extra = {"perf/env_steps_per_s": (now - steps_at_log) / (t - t_log),
                     "perf/updates_per_s": (counters["updates"] - updates_at_log) / (t - t_log),
                     "buffer/size": float(len(buffer)), "train/warmup_progress": min(1.0, now / max(1, cfg.warmup_steps)),
                     "train/updates": float(counters["updates"])}
            loop.log_metrics(now, metrics, extra, "online")
            t_log, steps_at_log, updates_at_log = t, now, counters["updates"]
        if loop.crossed(cfg.eval_every, before, now) or now >= cfg.steps:
            loop.evaluate(now, "online")
        if loop.crossed(cfg.save_every, before, now) or now >= cfg.steps:
            save(now)
            t_log = time.perf_counter()
        logger.progress(len(transitions), **({"eval": loop.last_eval["eval/return"]} if loop.last_eval else {}))
    logger.close()
    venv.close()
    return loop.last_eval
