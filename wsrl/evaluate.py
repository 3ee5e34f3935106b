"""Evaluation: the one implementation behind training's ``eval/*`` points and `wsrl evaluate`.

The protocol (DESIGN.md §2): N episodes side by side in one vector env seeded seed + 1000 + i,
deterministic actions (the actor's ``act(deterministic=True)``: tanh of the mean), unscaled
rewards. Every evaluation of a run replays the same start states, so the points on a curve are
comparable, and `wsrl evaluate` of a checkpoint with the run's seed reproduces the logged value.
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
from wsrl.data.rollout import policy_actions
from wsrl.envs import EnvSpec, env_dims, make_env, make_vector_env, normalized_score, resolve_env
from wsrl.errors import UserError
from wsrl.nets import set_precision
from wsrl.precision import effective_precision

Frames = Callable[[np.ndarray], None]


def _episodes(actor: torch.nn.Module, spec: EnvSpec, episodes: int, seed: int, device: torch.device,
              deterministic: bool, frame: Frames | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-episode returns and, where the env reports ``info["success"]``, per-episode success
    (the largest value an episode reported: a goal reached at any step counts, and a fraction
    such as kitchen's subtasks/4 counts at its best)."""
    venv = make_vector_env(spec, episodes, render_mode="rgb_array" if frame else None)
    obs, _ = venv.reset(seed=seed + 1000)
    returns, running = np.zeros(episodes), np.ones(episodes, dtype=bool)
    success = None
    was_training = getattr(actor, "training", False)
    actor.eval()
    if frame:
        frame(venv.envs[0].render())
    while running.any():
        actions = policy_actions(actor, obs, device, deterministic=deterministic)
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        returns += rewards * running
        if "success" in infos:
            reported = running & infos.get("_success", np.ones(episodes, dtype=bool))
            value = np.where(reported, np.asarray(infos["success"], dtype=float), 0.0)
            success = value if success is None else np.maximum(success, value)
        if frame and running[0]:
            frame(venv.envs[0].render())
        running &= ~(terminated | truncated)
    actor.train(was_training)
    venv.close()
    return returns, success


@torch.no_grad()
def evaluate(actor: torch.nn.Module, spec: EnvSpec, episodes: int, seed: int, device: torch.device,
             deterministic: bool = True, video: str | Path | None = None) -> dict[str, float]:
    """``eval/return`` (mean, and ``_std``), ``eval/normalized_score`` where the env has reference
    scores, ``eval/success_rate`` (and ``_std``) where it reports success. ``video``: the first
    episode as an mp4 (check `renderer_problem` first)."""
    if video is None:
        returns, success = _episodes(actor, spec, episodes, seed, device, deterministic, None)
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

                result["episodes"] = _episodes(actor, spec, episodes, seed, device, deterministic, frame)
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
    probe = ("import sys; from wsrl.envs import make_env, resolve_env; "
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
    Episodes and seed default to the run's, so a checkpoint's logged evaluation is reproduced."""
    from wsrl.policies import read_policy
    from wsrl.train import resolve_device

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
    actor = policy.actor(device, cfg.source)
    set_precision(actor, effective_precision(cfg.precision or policy.run_config.get("precision", "fp32"), device))
    torch.manual_seed(seed)  # after building the actor (its init draws numbers): sampled actions are reproducible
    metrics = evaluate(actor, spec, episodes, seed, device, deterministic=not cfg.sampled, video=cfg.video or None)
    summary = {**metrics, "episodes": float(episodes), "seed": float(seed)}
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
            f"{int(r['seed'])}): {line}" + (f"; video {cfg.video}" if cfg.video else ""))
