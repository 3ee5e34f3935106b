"""The one place that writes and reads checkpoints. No pickle anywhere.

A checkpoint is a folder ``RUN/checkpoints/step_<N>/``:

- ``model.safetensors``: the ``ActorCritic`` weights (actor, critic ensemble, target, value, temperatures);
- ``state.safetensors``: every other tensor (optimizer moments, RNG states, replay buffer, env states);
- ``state.json``: format version, what it was trained on, the full config, counters, and the
  non-tensor parts of the state, with ``{"__tensor__": key}`` where a tensor belongs;
- ``MANIFEST.json``: size and SHA-256 of each file above, written last.

It is written under a temporary name, fsynced, and renamed into place, so a ``step_*`` folder
that exists is complete; on load every file is checked against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wsrl.atomic import fsync
from wsrl.errors import UserError

FORMAT_VERSION = 2
"""2: recipes and the shared max-target switch in the config (format 1 is upgraded on load)."""
FILES = ("model.safetensors", "state.safetensors", "state.json")


class Checkpoint(NamedTuple):
    """A checkpoint as read (`load_checkpoint`); a tuple, so ``meta, model_state, state = ...`` reads it too."""

    meta: dict
    """state.json without the state: what it was trained on, the full config (``meta["config"]``), counters."""
    model_state: dict[str, torch.Tensor]
    """The ``ActorCritic`` weights."""
    state: dict
    """Everything else a resume restores (optimizers, RNG states, replay buffer, ...)."""


def encode(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Split a nested structure into JSON and a flat dict of tensors (numpy arrays come back as numpy)."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(tree, np.ndarray) and tree.dtype.kind in "biuf":
        tensors[path] = torch.from_numpy(np.ascontiguousarray(tree))
        return {"__ndarray__": path}
    if isinstance(tree, dict):
        return {str(k): encode(v, tensors, f"{path}/{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy()
        return {k: decode(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    return tree


def upgrade_config(data: dict) -> dict:
    """A config saved by an older wsrl (checkpoint format 1) in today's fields: the CQL-only
    max-target switch became ``max_target_backup`` (used by SAC too), and runs before recipes were
    WSRL's. The networks of format 1 are today's defaults for every new NetConfig field."""
    data = {**data, "agent": dict(data.get("agent", {}))}
    if "cql_max_target_backup" in data["agent"]:
        data["agent"]["max_target_backup"] = data["agent"].pop("cql_max_target_backup")
    data.pop("preset", None)
    data.setdefault("recipe", "wsrl")
    return data


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """Optimizer state with its integer parameter keys made explicit (JSON keys are strings)."""
    sd = opt.state_dict()
    return {"state": [{"param": k, **v} for k, v in sd["state"].items()], "param_groups": sd["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    per_param = {entry["param"]: {k: v for k, v in entry.items() if k != "param"} for entry in state["state"]}
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, step: int, meta: dict, model_state: dict[str, torch.Tensor],
                    state: dict, keep: int) -> Path:
    """Write ``checkpoints/step_<step>`` atomically and drop all but the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    for stale in root.glob(".tmp_step_*"):  # left by a writer that was killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp_step_{step:09d}_{os.getpid()}"
    tmp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    json_state = encode(state, tensors)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, tmp / "model.safetensors")
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION, "step": step,
                                                "state": json_state}, indent=1))
    manifest = {"format_version": FORMAT_VERSION,
                "files": {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES}}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    for name in (*FILES, "MANIFEST.json"):
        fsync(tmp / name)
    fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (by name: temporary folders are never called step_*), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def checkpoint_step(folder: Path) -> int:
    """The step a ``step_*`` checkpoint folder was saved at, from its name."""
    return int(Path(folder).name.removeprefix("step_"))


def run_finished(run_dir: Path) -> bool:
    """The run's newest checkpoint is at (or, with several envs per step, past) its --steps."""
    config = Path(run_dir) / "config.json"
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints or not config.is_file():
        return False
    return checkpoint_step(checkpoints[-1]) >= json.loads(config.read_text())["steps"]


def find_checkpoint(path: str | Path) -> Path:
    """A run directory (its newest checkpoint) or a ``step_*`` folder."""
    path = Path(path)
    if (path / "MANIFEST.json").exists() or path.name.startswith("step_"):
        return path
    found = list_checkpoints(path)
    if not found:
        raise UserError(f"--checkpoint {path}: no checkpoint found (expected {path}/checkpoints/step_*)")
    return found[-1]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Verify against the manifest, then read the checkpoint; tensors on CPU."""
    ckpt = find_checkpoint(path)
    manifest_path = ckpt / "MANIFEST.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        version, listed = manifest["format_version"], manifest["files"]
    except FileNotFoundError:
        raise UserError(f"checkpoint {ckpt}: MANIFEST.json is missing (incomplete or not a wsrl checkpoint)") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"checkpoint {manifest_path}: unreadable manifest") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"checkpoint {ckpt}: format version {version} is newer than this wsrl reads "
                        f"({FORMAT_VERSION}); upgrade wsrl")
    if version < 1:
        raise UserError(f"checkpoint {ckpt}: format version {version} predates this wsrl's {FORMAT_VERSION} "
                        f"and has no converter")
    for name in FILES:
        file = ckpt / name
        if name not in listed or not file.is_file():
            raise UserError(f"checkpoint {file}: missing")
        if file.stat().st_size != listed[name]["size"]:
            raise UserError(f"checkpoint {file}: size {file.stat().st_size} differs from the manifest's "
                            f"{listed[name]['size']} (truncated?)")
        if _sha256(file) != listed[name]["sha256"]:
            raise UserError(f"checkpoint {file}: checksum differs from the manifest (altered or corrupt)")
    try:
        model_state = load_file(ckpt / "model.safetensors")
        tensors = load_file(ckpt / "state.safetensors")
        meta = json.loads((ckpt / "state.json").read_text())
    except (SafetensorError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt}: unreadable ({e})") from None
    state = decode(meta.pop("state"), tensors)
    if version == 1:
        meta["config"] = upgrade_config(meta["config"])
    return Checkpoint(meta, model_state, state)
