"""SIGKILL a real `wsrl finetune` at several points, resume, and get what an uninterrupted run gives."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY, run_wsrl
from wsrl.checkpoint import list_checkpoints, load_checkpoint

# A fixed thread count: float reductions (and so bit-exactness) depend on it.
ARGS = ["--steps", 240, "--warmup-steps", 50, "--save-every", 30, "--batch-size", 32, "--threads", 1, *TINY]


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.wait()
    return False


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_matches_uninterrupted(tmp_path, pretrained):
    reference = tmp_path / "reference"
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", reference, *ARGS) == 0

    out = tmp_path / "crashy"
    ckpts = out / "checkpoints"
    start = [sys.executable, "-m", "wsrl.cli", "finetune", "--checkpoint", str(pretrained), "--out", str(out),
             *map(str, ARGS)]
    resume = [sys.executable, "-m", "wsrl.cli", "finetune", "--resume", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    writing = lambda: ckpts.is_dir() and any(p.name.startswith(".tmp_step_") for p in ckpts.iterdir())  # noqa: E731
    newest = lambda: list_checkpoints(out)[-1].name if list_checkpoints(out) else ""  # noqa: E731
    seen_steps = []

    # 1) before the first checkpoint exists: the resumed run starts over from the pretrained weights.
    proc = subprocess.Popen(start, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _kill_when(proc, lambda: (out / "metrics.jsonl").exists())
    # 2) in the middle of writing a checkpoint; 3) and 4) between checkpoints.
    for condition in (writing, lambda: newest() >= "step_000000090", lambda: newest() >= "step_000000150"):
        proc = subprocess.Popen(resume, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        killed = _kill_when(proc, condition)
        if list_checkpoints(out):
            seen_steps.append(load_checkpoint(out)[0]["step"])  # the newest complete one always loads
        if not killed:
            break
    assert subprocess.run(resume, env=env, capture_output=True).returncode == 0

    (meta_a, model_a, state_a), (meta_b, model_b, state_b) = load_checkpoint(reference), load_checkpoint(out)
    assert meta_b["step"] == meta_a["step"] == 240
    assert state_b["counters"] == state_a["counters"]
    assert len(state_b["buffer"]["rewards"]) == len(state_a["buffer"]["rewards"]) == 240
    for key, value in state_a["buffer"].items():
        assert torch.equal(value, state_b["buffer"][key]), key
    for key, value in model_a.items():
        assert torch.equal(value, model_b[key]), key
    assert not any(p.name.startswith(".tmp_") for p in ckpts.iterdir())
    assert seen_steps == sorted(seen_steps)
