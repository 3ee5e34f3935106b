"""Where and how a process computes: the device a run asks for, and the seeds and random-number
state of torch and numpy (saved in checkpoints, so a resumed run draws what the uninterrupted one
would). Every command uses these; none of them knows about training."""

from __future__ import annotations

import numpy as np
import torch

from wsrl.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``--device``: auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N; anything else is one error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: '{name}' is not a device (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return device


def seed_everything(seed: int) -> None:
    """torch's and numpy's global generators (envs and the replay sampler have their own seeds)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def rng_state() -> dict:
    """torch's generator states (CPU, and every GPU's where there are GPUs), for a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
