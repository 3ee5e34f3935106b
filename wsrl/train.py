"""The offline loop (`wsrl pretrain`) and what both training loops share (the online loop is
``wsrl.online``): device setup, the run directory, the agent, and ``Loop``'s logging, evaluation,
checkpoints and divergence guard.

Data flows one way: dataset -> agent -> checkpoint -> fine-tuning. Everything a user can get
wrong (env, dataset, checkpoint, device, run directory) is checked before anything is written.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from wsrl import __version__
from wsrl.agents import AGENTS, SAC
from wsrl.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from wsrl.config import NetConfig, PretrainConfig, RunConfig, to_dict
from wsrl.data.buffer import ReplayBuffer, scale_rewards
from wsrl.data.offline import OfflineData, validate
from wsrl.data.adapt import load_dataset
from wsrl.envs import env_dims, make_env
from wsrl.specs import EnvSpec, resolve_env
from wsrl.errors import DivergenceError, UserError
from wsrl.evaluate import evaluate
from wsrl.fast import configure_cpu, make_update
from wsrl.logs import RunLogger
from wsrl.nets import ActorCritic, set_precision
from wsrl.precision import effective_precision
from wsrl.recipes import pretraining_owner
from wsrl.runtime import resolve_device, rng_state, seed_everything, set_rng_state
from wsrl.schedule import LrSchedule


def setup_device(cfg: RunConfig) -> tuple[torch.device, RunConfig]:
    """The run's device, its CPU threads set before anything computes (so every run uses the same
    threads), and the config with the precision that will run there (saved in config.json)."""
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        configure_cpu(cfg.threads)
    return device, replace(cfg, precision=effective_precision(cfg.precision, device))


def prepare_run_dir(out: str, overwrite: bool, resume: bool) -> tuple[Path, Path | None]:
    """Refuse to mix two runs in one folder. Call only after all input is validated. With
    ``--overwrite`` the old contents are moved aside, not deleted: the caller deletes them once the
    new run has started (`start_run`), or puts them back if it could not."""
    if not out:
        raise UserError("--out: no run directory given")
    run_dir = Path(out)
    if resume:
        return run_dir, None
    replaced = None
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not overwrite:
            what = "a run" if (run_dir / "config.json").exists() else "other files"
            raise UserError(f"--out {run_dir}: already holds {what}; pass --resume {run_dir} to continue it "
                            f"or --overwrite to replace it")
        replaced = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        run_dir.rename(replaced)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, replaced


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


def read_data(cfg: RunConfig, spec: EnvSpec, obs_dim: int, act_dim: int) -> OfflineData:
    where = f"--dataset {cfg.dataset or spec.d4rl_name}"
    return validate(load_dataset(cfg.dataset, spec, cfg.download), obs_dim, act_dim, where)


@dataclass
class Loop:
    """What both loops share: logging cadence, evaluation, checkpointing, the divergence guard."""

    cfg: RunConfig
    spec: EnvSpec
    agent: SAC
    device: torch.device
    run_dir: Path
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
                               {**self.agent.state_dict(), "rng": rng_state(), **state}, self.cfg.keep_checkpoints)


def start_run(cfg: RunConfig, kind: str, spec: EnvSpec, algo: str, obs_dim: int, act_dim: int, device: torch.device,
              total: int, resume_step: int, **meta_extra) -> tuple[Path, dict, RunLogger]:
    """The run directory, its config.json, the checkpoints' metadata and the logger; called once
    every input has been checked, so a refused run writes nothing."""
    run_dir, replaced = prepare_run_dir(cfg.out, cfg.overwrite, resume=bool(cfg.resume))
    config = {"kind": kind, **to_dict(cfg)}
    try:
        logger = RunLogger(run_dir, total, resume_step, f"{kind} {algo} {spec.id}", config)  # writes config.json
    except UserError:  # e.g. W&B could not start a run: the folder is left as it was
        if replaced is not None:
            shutil.rmtree(run_dir)
            replaced.rename(run_dir)
        raise
    if replaced is not None:
        shutil.rmtree(replaced) if replaced.is_dir() else replaced.unlink()
    meta = {"kind": kind, "wsrl_version": __version__, "env": cfg.env, "env_id": spec.id, "algo": algo,
            "dataset": getattr(cfg, "dataset", ""), "obs_dim": obs_dim, "act_dim": act_dim, "config": config, **meta_extra}
    return run_dir, meta, logger


def pretrain(cfg: PretrainConfig) -> dict[str, float]:
    cfg.check()
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
        agent.load_state_dict(model_state, state, f"--resume {cfg.resume}", resume=True)
        buffer.set_sampler_state(state["sampler"])
        set_rng_state(state["rng"])
        start = meta["step"]

    loop = Loop(cfg, spec, agent, device, *start_run(cfg, "pretrain", spec, cfg.algo, obs_dim, act_dim, device, cfg.steps, start))
    logger = loop.logger
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
