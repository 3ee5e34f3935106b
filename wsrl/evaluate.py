"""Evaluation: the one implementation behind training's ``eval/*`` points and `wsrl evaluate`.

The protocol (docs/design.md, "Evaluation"): N episodes side by side in one vector env,
deterministic actions (the actor's ``act(deterministic=True)``: tanh of the mean), unscaled
rewards. Episode i of the evaluation at step t of a run seeded s starts from a reset seed drawn
from one generator seeded (s, t) (`start_seeds`): runs with different seeds share no start state,
each evaluation of a run sees new start states (so a curve's points are independent draws, not one
set of starts replayed), and `wsrl evaluate` of the checkpoint saved at t, with the run's seed,
reproduces the value logged at t.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsrl.atomic import atomic_write
from wsrl.config import EvaluateConfig
from wsrl.data.rollout import Collector, Episode, policy_actions
from wsrl.envs import env_dims, make_env, make_vector_env
from wsrl.specs import EnvSpec, normalized_score, resolve_env
from wsrl.errors import UserError
from wsrl.nets import set_precision
from wsrl.precision import effective_precision
from wsrl.runtime import resolve_device

Frames = Callable[[np.ndarray], None]

_STREAM = 0x5753524C  # "WSRL": keeps evaluation's start seeds apart from any other use of (seed, step)


def start_seeds(seed: int, step: int, episodes: int) -> list[int]:
    """The reset seed of each episode of the evaluation at ``step`` of a run seeded ``seed``.

    One ``SeedSequence`` per (seed, step) hashes both into the episodes' seeds, so two runs (or two
    steps) share a start only by chance (about 1 in 4e9 per pair of episodes). 32-bit words, as
    some envs hand their seed to numpy's legacy ``RandomState``; ``% 2**64`` maps a negative seed
    to a distinct entropy word."""
    words = np.random.SeedSequence([_STREAM, seed % 2**64, step % 2**64]).generate_state(episodes, np.uint32)
    return [int(w) for w in words]


def _episodes(actor: torch.nn.Module, spec: EnvSpec, seeds: list[int], device: torch.device,
              deterministic: bool, frame: Frames | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first episode of each env, one env per seed: per-episode returns and, where the env
    reports ``info["success"]``, per-episode success (`Episode.success`)."""
    venv = make_vector_env(spec, len(seeds), render_mode="rgb_array" if frame else None)
    collector = Collector(venv, seeds)
    first: dict[int, Episode] = {}
    was_training = getattr(actor, "training", False)
    actor.eval()
    if frame:
        frame(venv.envs[0].render())
    while len(first) < len(seeds):
        filming = frame is not None and 0 not in first
        _, finished = collector.step(policy_actions(actor, collector.obs, device, deterministic=deterministic))
        for episode in finished:
            first.setdefault(episode.env, episode)
        if filming:
            frame(venv.envs[0].render())
    actor.train(was_training)
    venv.close()
    episodes = [first[i] for i in range(len(seeds))]
    returns = np.array([e.episode_return for e in episodes])
    reported = [e.success for e in episodes if e.success is not None]
    return returns, np.array(reported) if len(reported) == len(episodes) else None


@torch.no_grad()
def evaluate(actor: torch.nn.Module, spec: EnvSpec, episodes: int, seed: int, step: int, device: torch.device,
             deterministic: bool = True, video: str | Path | None = None) -> dict[str, float]:
    """The evaluation at ``step`` of a run seeded ``seed`` (its start states: `start_seeds`).
    ``eval/return`` (mean, and ``_std``), ``eval/normalized_score`` where the env has reference
    scores, ``eval/success_rate`` (and ``_std``) where it reports success. ``video``: the first
    episode as an mp4 (check `renderer_problem` first)."""
    seeds = start_seeds(seed, step, episodes)
    if video is None:
        returns, success = _episodes(actor, spec, seeds, device, deterministic, None)
    else:
        import imageio_ffmpeg

        probe = make_env(spec)
        fps = int(probe.metadata.get("render_fps", 30))
        probe.close()
        result = {}

        def write(tmp: Path) -> None:
            writer = None
            try:
                def frame(image: np.ndarray) -> None:
                    nonlocal writer
                    if writer is None:
                        # The temporary name has no .mp4 suffix for ffmpeg to go by, hence -f mp4.
                        writer = imageio_ffmpeg.write_frames(str(tmp), (image.shape[1], image.shape[0]), fps=fps,
                                                             output_params=["-f", "mp4"], macro_block_size=1)
                        writer.send(None)
                    writer.send(np.ascontiguousarray(image))

                result["episodes"] = _episodes(actor, spec, seeds, device, deterministic, frame)
            finally:
                if writer is not None:
                    writer.close()

        atomic_write(Path(video), write)
        returns, success = result["episodes"]
    metrics = {"eval/return": float(returns.mean()), "eval/return_std": float(returns.std())}
    score = normalized_score(spec, metrics["eval/return"])
    if score is not None:
        metrics["eval/normalized_score"] = score
    if success is not None:
        metrics["eval/success_rate"] = float(success.mean())
        metrics["eval/success_rate_std"] = float(success.std())
    return metrics


def renderer_problem(spec: EnvSpec) -> str | None:
    """Why MuJoCo cannot render ``spec``'s env offscreen here, or None when it can.

    Tried in a child process: a missing GL backend fails deep inside MuJoCo or PyOpenGL, some
    drivers abort the process, and the failed renderer's finalizers print tracebacks at exit."""
    probe = ("import sys; from wsrl.envs import make_env; from wsrl.specs import resolve_env; "
             "env = make_env(resolve_env(sys.argv[1]), render_mode='rgb_array'); env.reset(seed=0); "
             "frame = env.render(); env.close(); "
             "sys.exit(0 if frame is not None and frame.size else 'the env rendered no image')")
    try:
        done = subprocess.run([sys.executable, "-c", probe, spec.id], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "rendering one frame took over 2 minutes"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip() and not line.startswith(" ")]
    errors = [line for line in lines if "Error" in line.split(":")[0]] or lines or [f"exit code {done.returncode}"]
    return errors[0]


def _check_video(path: str, spec: EnvSpec) -> None:
    if not path.endswith(".mp4"):
        raise UserError(f"--video {path}: give an .mp4 file name")
    if Path(path).is_dir():
        raise UserError(f"--video {path}: is a directory")
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise UserError("--video: needs imageio-ffmpeg (pip install 'wsrl[video]')")
    problem = renderer_problem(spec)
    if problem is not None:
        backend = os.environ.get("MUJOCO_GL") or "unset"
        raise UserError(f"--video: MuJoCo cannot render offscreen here (MUJOCO_GL={backend}: {problem}); install "
                        f"Debian's libosmesa6 and set MUJOCO_GL=osmesa, or set MUJOCO_GL=egl where an EGL driver is")


def evaluate_policy(cfg: EvaluateConfig) -> dict:
    """`wsrl evaluate`: a run, checkpoint or shipped policy under training's evaluation protocol.
    Episodes, seed and step default to the run's and the checkpoint's, so a checkpoint's logged
    evaluation is reproduced."""
    from wsrl.policies import read_policy

    if cfg.episodes < 0:
        raise UserError(f"--episodes: must be positive (or 0 for the run's --eval-episodes), got {cfg.episodes}")
    if not cfg.source:
        raise UserError("no policy given (wsrl evaluate RUN_OR_CHECKPOINT)")
    policy = read_policy(cfg.source, cfg.source)
    spec = resolve_env(policy.env)
    if env_dims(make_env(spec)) != (policy.obs_dim, policy.act_dim):
        raise UserError(f"{cfg.source}: obs/action sizes {policy.obs_dim}/{policy.act_dim} do not fit {spec.id}")
    if cfg.video:
        _check_video(cfg.video, spec)
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    episodes = cfg.episodes or int(policy.run_config.get("eval_episodes", 20))
    seed = cfg.seed if cfg.seed is not None else int(policy.run_config.get("seed", 0))
    step = cfg.step if cfg.step is not None else int(policy.description.get("step") or 0)
    actor = policy.actor(device, cfg.source)
    set_precision(actor, effective_precision(cfg.precision or policy.run_config.get("precision", "fp32"), device))
    torch.manual_seed(seed)  # after building the actor (its init draws numbers): sampled actions are reproducible
    metrics = evaluate(actor, spec, episodes, seed, step, device, deterministic=not cfg.sampled, video=cfg.video or None)
    summary = {**metrics, "episodes": float(episodes), "seed": float(seed), "starts_of_step": float(step)}
    if "eval/normalized_score" in metrics:
        std = normalized_score(spec, metrics["eval/return"] + metrics["eval/return_std"]) - metrics["eval/normalized_score"]
        summary["eval/normalized_score_std"] = abs(std)
    return {"env": spec.id, "step": policy.description.get("step"), **summary}


def summary_line(cfg: EvaluateConfig, r: dict) -> str:
    how = "sampled actions" if cfg.sampled else "deterministic"
    line = f"return {r['eval/return']:.1f} ± {r['eval/return_std']:.1f}"
    if "eval/normalized_score" in r:
        line += f", normalised score {r['eval/normalized_score']:.1f} ± {r['eval/normalized_score_std']:.1f}"
    if "eval/success_rate" in r:
        line += f", success rate {r['eval/success_rate']:.2f} ± {r['eval/success_rate_std']:.2f}"
    step = f" (step {r['step']})" if r["step"] is not None else ""
    return (f"wsrl evaluate: {cfg.source}{step} on {r['env']}, {int(r['episodes'])} episodes ({how}, seed "
            f"{int(r['seed'])}, starts of step {int(r['starts_of_step'])}): {line}" + (f"; video {cfg.video}" if cfg.video else ""))
