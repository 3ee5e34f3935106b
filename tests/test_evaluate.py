"""`wsrl evaluate`: the protocol of training's evaluations, success rates, and video."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import run_wsrl
from wsrl.config import EvaluateConfig
from wsrl.envs import resolve_env
from wsrl.evaluate import evaluate, evaluate_policy, renderer_problem


def test_evaluate_reproduces_the_evaluation_logged_in_training(pretrained, capsys):
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "eval/return" in r][-1]  # the final evaluation, of the saved checkpoint
    result = evaluate_policy(EvaluateConfig(source=str(pretrained)))  # episodes and seed: the run's
    assert result["episodes"] == 2 and result["seed"] == 0 and result["step"] == logged["step"]
    assert result["eval/return"] == pytest.approx(logged["eval/return"], rel=1e-9)
    assert result["eval/normalized_score"] == pytest.approx(logged["eval/normalized_score"], rel=1e-9)

    assert run_wsrl("evaluate", pretrained, "--episodes", 3, "--sampled", "--seed", 5) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wsrl evaluate: {pretrained} (step 60) on Hopper-v5, 3 episodes (sampled actions, seed 5): return ")
    assert "normalised score" in line and "±" in line


class _GoalEnv(gym.Env):
    """Reports info["success"] at step 2 of 4 on even reset seeds only: an episode's success is
    whether it was reached at any step, not the value at the last step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.even, self.t = seed is not None and seed % 2 == 0, 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 1.0, self.t == 4, False, {"success": self.even and self.t == 2}


def test_success_rate_is_aggregated_where_the_env_reports_it():
    gym.register("WsrlTestGoal-v0", entry_point=_GoalEnv)
    actor = torch.nn.Linear(2, 1)
    actor.act = lambda obs, deterministic: torch.zeros(len(obs), 1 if obs.shape[-1] == 2 else 3)
    metrics = evaluate(actor, resolve_env("WsrlTestGoal-v0"), 4, 0, torch.device("cpu"))  # seeds 1000..1003
    assert metrics["eval/return"] == 4.0 and "eval/normalized_score" not in metrics
    assert metrics["eval/success_rate"] == 0.5 and metrics["eval/success_rate_std"] == 0.5
    hopper = evaluate(actor, resolve_env("Hopper-v5"), 1, 0, torch.device("cpu"))
    assert "eval/success_rate" not in hopper  # Hopper reports no success


@pytest.fixture
def pendulum_policy(tmp_path):
    """An untrained actor as a policy folder for InvertedPendulum, whose episodes then last ~25 steps:
    a video of a few dozen frames (software rendering takes ~50 ms a frame)."""
    from safetensors.torch import save_file

    from wsrl.config import NetConfig
    from wsrl.nets import Actor

    folder = tmp_path / "pendulum"
    folder.mkdir()
    actor = Actor(4, 1, NetConfig(actor_hidden=(8,)))
    save_file(actor.state_dict(), folder / "actor.safetensors")
    info = {"env_id": "InvertedPendulum-v5", "obs_dim": 4, "act_dim": 1, "net": {"actor_hidden": [8]}}
    (folder / "policy.json").write_text(json.dumps(info))
    return folder


def test_video_writes_an_mp4_with_osmesa(pendulum_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    problem = renderer_problem(resolve_env("InvertedPendulum-v5"))
    if problem is not None:
        pytest.skip(f"MuJoCo cannot render with MUJOCO_GL=osmesa on this machine ({problem}); "
                    f"apt-get install libosmesa6 makes it run")
    pytest.importorskip("imageio_ffmpeg", reason="the mp4 writer is in the 'video' extra")
    video = tmp_path / "episode.mp4"
    # A child process: MuJoCo picks its GL backend when it is first imported, and this one already has.
    done = subprocess.run([sys.executable, "-m", "wsrl.cli", "evaluate", str(pendulum_policy), "--episodes", "1",
                           "--video", str(video)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert video.stat().st_size > 1000 and video.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    assert f"video {video}" in done.stdout


def test_video_without_a_render_backend_is_one_line(pendulum_policy, tmp_path, monkeypatch, capsys):
    # GLFW needs a display; with none, MuJoCo has no context to render into.
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    for var in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    video = tmp_path / "episode.mp4"
    assert run_wsrl("evaluate", pendulum_policy, "--video", video) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsrl evaluate: error: --video: MuJoCo cannot render offscreen here (MUJOCO_GL=glfw")
    assert "libosmesa6" in err and len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pendulum"]


def test_evaluate_bad_input(tmp_path, capsys):
    assert run_wsrl("evaluate", tmp_path / "nothing") == 2
    assert "not a shipped policy" in capsys.readouterr().err
    assert run_wsrl("evaluate", "hopper-medium", "--episodes", -1) == 2
    assert "--episodes" in capsys.readouterr().err
    assert run_wsrl("evaluate", "hopper-medium", "--video", tmp_path / "v.gif") == 2
    assert "--video" in capsys.readouterr().err and not (tmp_path / "v.gif").exists()
