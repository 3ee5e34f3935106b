"""Policies: loading any policy source, the shipped ones, and exporting a trained actor.

A source is ``random``, a shipped policy name (``wsrl/policies/<name>/``: the actor alone plus
``policy.json``), or a wsrl run directory / ``checkpoints/step_*`` folder (its actor). An export
writes the deterministic actor (tanh of the mean for the tanh-Gaussian actor) in a form that
runs without wsrl — ONNX or a ``torch.export`` program — or as a shipped-policy folder, each
with the same metadata: env, observation and action sizes, the env's action bounds (the actor
acts in [-1, 1]), the dict-observation layout (which keys, in which order), the actor kind.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from wsrl import __version__
from wsrl.atomic import atomic_write
from wsrl.config import ExportConfig, ExportFormat
from wsrl.domains import domain_of
from wsrl.envs import env_dims, make_env
from wsrl.specs import EnvSpec, resolve_env
from wsrl.errors import UserError

METADATA_KEY = "wsrl"
"""ONNX metadata_props key, and ``wsrl.json`` in a .pt2 archive's extra files, holding the metadata JSON."""


class RandomActor(torch.nn.Module):
    """Uniform actions in [-1, 1]; has the actor interface (``act``) so it plugs in anywhere."""

    def __init__(self, act_dim: int, seed: int = 0):
        super().__init__()
        self.act_dim = act_dim
        self.generator = torch.Generator().manual_seed(seed)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        shape = (*obs.shape[:-1], self.act_dim)
        return (torch.rand(shape, generator=self.generator) * 2.0 - 1.0).to(obs.device)


def shipped_policies() -> list[str]:
    root = resources.files("wsrl") / "policies"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "policy.json").is_file())


def shipped_policy_info(name: str) -> dict:
    """A shipped policy's policy.json: env id, obs/act sizes, net config, measured return, command."""
    return json.loads((_policy_folder(name) / "policy.json").read_text())


@dataclass(frozen=True)
class TrainedPolicy:
    """A trained actor's weights and what it was trained on, from a shipped policy or a checkpoint."""

    env: str
    """The env as the run named it (a Gymnasium id or a D4RL name): it carries the reference scores."""
    env_id: str
    obs_dim: int
    act_dim: int
    net: dict
    weights: dict[str, torch.Tensor]
    description: dict
    run_config: dict
    """The training run's config.json ({} for a shipped policy)."""

    def net_config(self, where: str):
        from wsrl.config import NetConfig, from_dict

        return from_dict(NetConfig, self.net, where)

    def actor(self, device: torch.device, where: str) -> torch.nn.Module:
        from wsrl.nets import Actor

        actor = Actor(self.obs_dim, self.act_dim, self.net_config(where))
        try:
            actor.load_state_dict(self.weights)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise UserError(f"{where}: actor weights do not fit this wsrl version "
                            f"({first[-1].strip() if first else e})") from None
        return actor.to(device).eval()


def _policy_folder(source: str):
    """A shipped policy's folder by name, or any folder `wsrl export --format policy` wrote."""
    if source in shipped_policies():
        return resources.files("wsrl") / "policies" / source
    if (Path(source) / "policy.json").is_file():
        return Path(source)
    return None


def read_policy(source: str, where: str) -> TrainedPolicy:
    """A shipped policy (name or folder) or a run/checkpoint directory; anything else is one clear error."""
    folder = _policy_folder(source)
    if folder is not None:
        from safetensors.torch import load_file

        info = json.loads((folder / "policy.json").read_text())
        with resources.as_file(folder / "actor.safetensors") as path:
            weights = load_file(path)
        return TrainedPolicy(info.get("env", info["env_id"]), info["env_id"], info["obs_dim"], info["act_dim"],
                             info["net"], weights,
                             {"kind": "shipped", "name": source, "measured_return": info.get("measured_return")}, {})
    if Path(source).exists():
        from wsrl.checkpoint import find_checkpoint, load_checkpoint

        meta, model_state, _ = load_checkpoint(source)
        weights = {k[len("actor."):]: v for k, v in model_state.items() if k.startswith("actor.")}
        return TrainedPolicy(meta["env"], meta["env_id"], meta["obs_dim"], meta["act_dim"], meta["config"]["net"],
                             weights, {"kind": "checkpoint", "path": str(find_checkpoint(source)),
                                       "step": meta["step"], "run_kind": meta["kind"]}, meta["config"])
    known = ", ".join(shipped_policies())
    raise UserError(f"{where}: not a shipped policy ({known}), a policy folder or an existing run/checkpoint directory")


def load_policy(source: str, spec: EnvSpec, obs_dim: int, act_dim: int, device: torch.device, seed: int = 0):
    """An object with ``act(obs, deterministic)`` for ``random``, a shipped name or a run/checkpoint dir,
    and a description of it for the metadata."""
    if source == "random":
        return RandomActor(act_dim, seed), {"kind": "random"}
    where = f"--policy {source}"
    if not Path(source).exists() and source not in shipped_policies():
        known = ", ".join(["random", *shipped_policies()])
        raise UserError(f"{where}: not a shipped policy ({known}), an existing run/checkpoint directory, "
                        f"or replay:RUN_DIR")
    policy = read_policy(source, where)
    check_policy_env(source, policy.env_id, policy.obs_dim, policy.act_dim, spec, obs_dim, act_dim)
    return policy.actor(device, where), policy.description


def check_policy_env(source: str, env_id: str, p_obs: int, p_act: int, spec: EnvSpec, obs_dim: int, act_dim: int) -> None:
    if env_id != spec.id:
        raise UserError(f"--policy {source}: was trained on {env_id}, not {spec.id}")
    if (p_obs, p_act) != (obs_dim, act_dim):
        raise UserError(f"--policy {source}: has obs/action sizes {p_obs}/{p_act}, {spec.id} has {obs_dim}/{act_dim}")


class DeterministicPolicy(torch.nn.Module):
    """obs [B, obs_dim] -> the actor's deterministic action [B, act_dim] in [-1, 1]; what an export holds.

    It calls the actor's own ``act(deterministic=True)``, so every actor kind exports the action
    wsrl's evaluation takes."""

    def __init__(self, actor: torch.nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.act(obs, deterministic=True)


def actor_kind(policy: TrainedPolicy) -> str:
    net = policy.net_config("policy")
    squash = "tanh-squashed Gaussian" if net.actor_tanh else "Gaussian, actions clipped to [-1, 1]"
    return f"{squash}, {'state-dependent' if net.actor_std == 'state' else 'state-independent'} std"


def export_metadata(policy: TrainedPolicy) -> dict:
    """What a user of the exported file needs besides the weights: sizes, env, action scaling, obs layout."""
    import gymnasium as gym

    spec = resolve_env(policy.env)
    env = make_env(spec)
    if env_dims(env) != (policy.obs_dim, policy.act_dim):
        raise UserError(f"{policy.env_id}: has obs/action sizes {env_dims(env)}, the policy {policy.obs_dim}/{policy.act_dim}")
    raw_actions, raw_obs = env.unwrapped.action_space, env.unwrapped.observation_space
    # The domain's own flattening decides the layout (AntMaze leaves the fixed goal out, kitchen
    # keeps part of the state), so it comes from the domain, not from the space's keys.
    obs_layout = domain_of(spec).layout(raw_obs) if isinstance(raw_obs, gym.spaces.Dict) else None
    env.close()
    return {"format": "wsrl-policy", "wsrl_version": __version__, "env": policy.env, "env_id": policy.env_id,
            "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
            "actor_kind": actor_kind(policy), "output": "deterministic action in [-1, 1]",
            "action_scaling": {"low": np.asarray(raw_actions.low, dtype=float).tolist(),
                               "high": np.asarray(raw_actions.high, dtype=float).tolist(),
                               "env_action": "low + (action + 1) / 2 * (high - low)"},
            "obs_keys": obs_layout, "net": policy.net, "source": policy.description}


def export_policy(source: str, out: str | Path, fmt: str, extra: dict | None = None) -> tuple[Path, dict]:
    """Write ``source``'s deterministic actor to ``out`` as ONNX, a ``torch.export`` .pt2, or a
    shipped-policy folder (``actor.safetensors`` + ``policy.json``); ``extra`` joins the metadata.
    Written under a temporary name and renamed, so ``out`` is complete or absent."""
    if fmt not in get_args(ExportFormat):
        raise UserError(f"--format: unknown value '{fmt}' (choose from {', '.join(get_args(ExportFormat))})")
    out = Path(out)
    suffix = {"onnx": ".onnx", "pt2": ".pt2"}.get(fmt)
    if suffix and out.suffix != suffix:
        raise UserError(f"--out {out}: a {fmt} export should end in {suffix}")
    policy = read_policy(source, source)
    actor = policy.actor(torch.device("cpu"), source)
    meta = {**export_metadata(policy), **(extra or {})}
    module = DeterministicPolicy(actor.requires_grad_(False)).eval()  # an inference program: no grad-tracking weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations, nothing a user can act on
        _write_export(policy, module, meta, out, fmt)
    return out, meta


def _write_export(policy: TrainedPolicy, module: torch.nn.Module, meta: dict, out: Path, fmt: str) -> None:
    example = torch.zeros(2, policy.obs_dim)
    batch = torch.export.Dim("batch", min=1)
    if fmt == "policy":
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous() for k, v in policy.weights.items()}
        atomic_write(out / "actor.safetensors", lambda tmp: save_file(weights, tmp))
        atomic_write(out / "policy.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))
    elif fmt == "pt2":
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        archive = io.BytesIO()  # torch.export.save wants a .pt2 name; the temporary file has none
        torch.export.save(program, archive, extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
        atomic_write(out, lambda tmp: tmp.write_bytes(archive.getvalue()))
    else:
        if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript")):  # torch.onnx needs both
            raise UserError("--format onnx: needs onnx and onnxscript (pip install 'wsrl[export]')")
        import onnx

        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # it warns about every torchvision op it cannot register
        try:
            # Our own torch.export first: torch.onnx's capture strategies patch torch._inductor's config,
            # which fails in a process where inductor was already set up (e.g. after --compile).
            exported = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            program = torch.onnx.export(exported, (example,), input_names=["observations"], output_names=["actions"],
                                        dynamo=True, verbose=False)
        finally:
            quiet.setLevel(level)
        model = program.model_proto
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        atomic_write(out, lambda tmp: onnx.save(model, str(tmp)))


def export(cfg: ExportConfig) -> Path:
    """`wsrl export`: refuses to replace an existing output unless --overwrite."""
    if not cfg.out:
        raise UserError("--out: no output given (a .onnx or .pt2 file, or a folder with --format policy)")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"--out {out}: exists; pass --overwrite to replace it")
    return export_policy(cfg.source, out, cfg.format)[0]
