"""`wsrl evaluate`: the protocol of training's evaluations, success rates, and video."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import TINY, run_wsrl
from wsrl.config import EvaluateConfig
from wsrl.specs import resolve_env
from wsrl.evaluate import evaluate, evaluate_policy, renderer_problem, start_seeds


def _hopper_starts(seeds: list[int]) -> np.ndarray:
    env = gym.make("Hopper-v5")
    starts = np.stack([env.reset(seed=s)[0] for s in seeds])
    env.close()
    return starts


def test_no_two_run_seeds_share_a_start_state_and_each_evaluation_draws_new_ones():
    episodes, steps = 10, range(0, 16_001, 1000)
    per_run = {seed: [start_seeds(seed, step, episodes) for step in steps] for seed in range(5)}
    all_seeds = [s for evaluations in per_run.values() for ev in evaluations for s in ev]
    assert len(set(all_seeds)) == len(all_seeds)  # no reset seed twice: across run seeds, steps and episodes
    assert start_seeds(3, 2000, episodes) == per_run[3][2]  # a function of (seed, step) alone: replayable
    assert start_seeds(3, 2000, 4) == per_run[3][2][:4]  # episode i's start does not depend on the count

    # The start states themselves, not just the seeds: seed 0 and seed 1 share none, and evaluation k
    # and k+1 of one run share none.
    run0, run1 = _hopper_starts(per_run[0][1]), _hopper_starts(per_run[1][1])
    next0 = _hopper_starts(per_run[0][2])
    for a, b in ((run0, run1), (run0, next0)):
        distances = np.abs(a[:, None, :] - b[None, :, :]).max(-1)
        assert distances.min() > 1e-6


def test_evaluations_at_different_steps_of_one_run_see_different_starts(pretrained):
    from wsrl.policies import read_policy

    actor = read_policy(str(pretrained), "test").actor(torch.device("cpu"), "test")
    hopper = resolve_env("Hopper-v5")
    first, again = (evaluate(actor, hopper, 3, 0, 1000, torch.device("cpu")) for _ in range(2))
    later = evaluate(actor, hopper, 3, 0, 2000, torch.device("cpu"))
    other_seed = evaluate(actor, hopper, 3, 1, 1000, torch.device("cpu"))
    assert first == again
    assert later["eval/return"] != first["eval/return"] and other_seed["eval/return"] != first["eval/return"]


def test_evaluate_reproduces_each_logged_fine_tuning_evaluation_from_its_checkpoint(tmp_path, pretrained):
    out = tmp_path / "ft"
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 120, "--warmup-steps", 40,
                    "--eval-every", 40, "--save-every", 40, "--keep-checkpoints", 5, "--seed", 3, *TINY,
                    "--batch-size", 32) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval/return"] for r in rows if "eval/return" in r}
    assert sorted(logged) == [0, 40, 80, 120] and len(set(logged.values())) == 4
    for step in (40, 80, 120):
        result = evaluate_policy(EvaluateConfig(source=str(out / "checkpoints" / f"step_{step:09d}")))
        assert result["seed"] == 3 and result["starts_of_step"] == step
        assert result["eval/return"] == pytest.approx(logged[step], rel=1e-9)


def test_evaluate_reproduces_the_evaluation_logged_in_training(pretrained, capsys):
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "eval/return" in r][-1]  # the final evaluation, of the saved checkpoint
    result = evaluate_policy(EvaluateConfig(source=str(pretrained)))  # episodes and seed: the run's
    assert result["episodes"] == 2 and result["seed"] == 0 and result["step"] == logged["step"]
    assert result["eval/return"] == pytest.approx(logged["eval/return"], rel=1e-9)
    assert result["eval/normalized_score"] == pytest.approx(logged["eval/normalized_score"], rel=1e-9)

    assert run_wsrl("evaluate", pretrained, "--episodes", 3, "--sampled", "--seed", 5) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wsrl evaluate: {pretrained} (step 60) on Hopper-v5, 3 episodes (sampled actions, seed 5, "
                           f"starts of step 60): return ")
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
    seeds = start_seeds(0, 0, 4)
    assert 0 < sum(s % 2 == 0 for s in seeds) < 4, "the test needs both parities among the reset seeds"
    metrics = evaluate(actor, resolve_env("WsrlTestGoal-v0"), 4, 0, 0, torch.device("cpu"))
    assert metrics["eval/return"] == 4.0 and "eval/normalized_score" not in metrics
    expected = np.array([s % 2 == 0 for s in seeds], dtype=float)
    assert metrics["eval/success_rate"] == expected.mean() and metrics["eval/success_rate_std"] == expected.std()
    hopper = evaluate(actor, resolve_env("Hopper-v5"), 1, 0, 0, torch.device("cpu"))
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


@pytest.mark.slow
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
