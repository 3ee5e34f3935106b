"""Parameters of the authors' JAX release (zhouzypaul/wsrl at 891ee35) <-> wsrl's ``ActorCritic``.

The release keeps its networks in one flax ``ModuleDict``, so its parameter tree is
``{"modules_actor": ..., "modules_critic": ..., "modules_temperature": ..., ...}`` with
flax's automatic names (``network/Dense_0``, ``network/LayerNorm_0``, ...), kernels ``[in, out]``
and the critic's hidden layers vmapped over a leading ensemble axis. Its critic has one output
``Dense`` shared by all members, its actor separate mean and log-std ``Dense`` layers (or a
``log_stds`` vector for a state-independent std), and its temperature and CQL multiplier store
softplus^-1 of their value. wsrl stacks every layer as ``[E, in, out]``, concatenates mean and
log-std into one output layer, and stores log alpha (softplus^-1 alpha too with
``NetConfig.softplus_multipliers``, where the conversion of the multipliers is exact). Numpy and torch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wsrl.config import NetConfig

Tree = dict  # nested dict of numpy arrays, the release's param tree

# The release's ModuleDict keys and the wsrl modules they correspond to.
_MLP_MODULES = {"modules_actor": "actor", "modules_critic": "critic", "modules_value": "value"}
_SCALARS = {"modules_temperature": "log_alpha", "modules_cql_alpha_lagrange": "cql_log_alpha"}


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _hidden_layers(state_dict: dict[str, torch.Tensor], prefix: str, layer_norm: bool) -> list[tuple[int, int | None]]:
    """(Linear index, LayerNorm index or None) of each hidden layer of ``prefix``'s EnsembleMLP,
    read from the state_dict keys (ReLU and Dropout have no parameters, so indices have gaps)."""
    indices = sorted({int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)})
    if layer_norm:
        return list(zip(indices[0::2], indices[1::2]))
    return [(i, None) for i in indices]


def to_release(state_dict: dict[str, torch.Tensor], net: NetConfig, modules: tuple[str, ...]) -> tuple[Tree, Tree]:
    """wsrl ``ActorCritic.state_dict()`` -> the release's ``(params, target_params)``.

    ``modules``: the release ModuleDict keys its agent has, e.g. ``("modules_actor",
    "modules_critic", "modules_temperature")`` for SAC, plus ``"modules_cql_alpha_lagrange"``
    for Lagrange CQL, or ``("modules_actor", "modules_critic", "modules_value")`` for IQL.
    Raises ValueError where the release cannot represent the weights (per-member critic heads
    that differ). ``target_params`` holds the target critic; its other entries, which the release
    never reads, are copies of ``params``.
    """
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state_dict.items()}
    params: Tree = {}
    target: Tree = {}
    for name in modules:
        if name in _SCALARS:
            raw = float(sd[_SCALARS[name]])
            # The release's own softplus^-1 parameter (softplus_multipliers), or log alpha.
            value = raw if net.softplus_multipliers else _softplus_inverse(math.exp(raw))
            params[name] = {"lagrange": np.asarray(value, dtype=np.float32)}
        elif name in _MLP_MODULES:
            params[name] = _mlp_to_release(sd, _MLP_MODULES[name], net)
        else:
            raise ValueError(f"unknown release module '{name}'")
    for name, tree in params.items():
        target[name] = _mlp_to_release(sd, "target_critic", net) if name == "modules_critic" else _copy(tree)
    return params, target


def from_release(params: Tree, target_params: Tree, net: NetConfig,
                 like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's ``(params, target_params)`` -> a wsrl state_dict shaped like ``like``.

    Entries the release's agent has no counterpart for (the value net of a SAC agent, the CQL
    multiplier of a fixed-alpha one) are copied from ``like``. A shared release head goes to
    every member of a per-member wsrl head.
    """
    out = {k: v.detach().clone() for k, v in like.items()}

    def put(key: str, value: np.ndarray) -> None:
        if key not in out:
            raise ValueError(f"wsrl model has no parameter '{key}'")
        ref = out[key]
        # Only an output layer may broadcast: the release's one shared head to every member.
        if key.endswith((".head.weight", ".head.bias")) and value.shape[0] == 1:
            value = np.broadcast_to(value, (ref.shape[0], *value.shape[1:]))
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"{key}: release shape {value.shape} does not fit wsrl's {tuple(ref.shape)}")
        out[key] = torch.tensor(np.array(value, dtype=np.float32))

    for name, tree in params.items():
        if name in _SCALARS:
            raw = float(tree["lagrange"])
            out[_SCALARS[name]] = torch.tensor(raw if net.softplus_multipliers else math.log(_softplus(raw)), dtype=torch.float32)
        elif name in _MLP_MODULES:
            for key, value in _mlp_from_release(tree, _MLP_MODULES[name], net, out).items():
                put(key, value)
        else:
            raise ValueError(f"unknown release module '{name}'")
    if "modules_critic" in target_params:
        for key, value in _mlp_from_release(target_params["modules_critic"], "target_critic", net, out).items():
            put(key, value)
    return out


def _mlp_to_release(sd: dict[str, np.ndarray], module: str, net: NetConfig) -> Tree:
    ensemble = module in ("critic", "target_critic")
    member = (lambda a: a) if ensemble else (lambda a: a[0])  # the release's actor/value have no ensemble axis
    tree: Tree = {"network": {}}
    for i, (lin, ln) in enumerate(_hidden_layers(sd, f"{module}.mlp.hidden.", net.layer_norm)):
        w, b = sd[f"{module}.mlp.hidden.{lin}.weight"], sd[f"{module}.mlp.hidden.{lin}.bias"]
        tree["network"][f"Dense_{i}"] = {"kernel": member(w), "bias": member(b[:, 0])}
        if ln is not None:
            scale, bias = sd[f"{module}.mlp.hidden.{ln}.weight"], sd[f"{module}.mlp.hidden.{ln}.bias"]
            tree["network"][f"LayerNorm_{i}"] = {"scale": member(scale[:, 0]), "bias": member(bias[:, 0])}
    w, b = sd[f"{module}.mlp.head.weight"], sd[f"{module}.mlp.head.bias"]
    if ensemble and w.shape[0] > 1:
        if not (np.array_equal(w, np.broadcast_to(w[:1], w.shape)) and np.array_equal(b, np.broadcast_to(b[:1], b.shape))):
            raise ValueError(f"{module}: per-member output layers differ; the release shares one output layer")
    w, b = w[0], b[0, 0]
    if module != "actor":
        tree["Dense_0"] = {"kernel": w, "bias": b}
    elif f"{module}.log_std" in sd:
        tree["Dense_0"] = {"kernel": w, "bias": b}
        tree["log_stds"] = sd[f"{module}.log_std"]
    else:
        act_dim = w.shape[1] // 2
        tree["Dense_0"] = {"kernel": w[:, :act_dim], "bias": b[:act_dim]}
        tree["Dense_1"] = {"kernel": w[:, act_dim:], "bias": b[act_dim:]}
    return tree


def _mlp_from_release(tree: Tree, module: str, net: NetConfig, like: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Release module tree -> {wsrl key: array in wsrl's layout ([E, in, out], [E, 1, out])}."""
    ensemble = module in ("critic", "target_critic")
    stacked = (lambda a: a) if ensemble else (lambda a: a[None])  # add the actor/value's ensemble axis of 1
    row = lambda a: stacked(a)[:, None]  # noqa: E731  biases and LayerNorm params are [E, 1, out]
    layers = _hidden_layers(like, f"{module}.mlp.hidden.", net.layer_norm)
    names = sorted(tree["network"])
    if len(names) != len(layers) * (2 if net.layer_norm else 1):
        raise ValueError(f"{module}: release has layers {names}, wsrl has {len(layers)} hidden layers"
                         f"{' with LayerNorm' if net.layer_norm else ''}")
    out: dict[str, np.ndarray] = {}
    for i, (lin, ln) in enumerate(layers):
        dense = tree["network"][f"Dense_{i}"]
        out[f"{module}.mlp.hidden.{lin}.weight"] = stacked(dense["kernel"])
        out[f"{module}.mlp.hidden.{lin}.bias"] = row(dense["bias"])
        if ln is not None:
            norm = tree["network"][f"LayerNorm_{i}"]
            out[f"{module}.mlp.hidden.{ln}.weight"] = row(norm["scale"])
            out[f"{module}.mlp.hidden.{ln}.bias"] = row(norm["bias"])
    head_w, head_b = tree["Dense_0"]["kernel"], tree["Dense_0"]["bias"]
    if module == "actor" and "Dense_1" in tree:  # mean and log-std layers -> one output layer, mean first
        head_w = np.concatenate([head_w, tree["Dense_1"]["kernel"]], axis=-1)
        head_b = np.concatenate([head_b, tree["Dense_1"]["bias"]], axis=-1)
    out[f"{module}.mlp.head.weight"] = head_w[None]
    out[f"{module}.mlp.head.bias"] = head_b[None, None]
    if "log_stds" in tree:
        out[f"{module}.log_std"] = tree["log_stds"]
    return out


def _copy(tree: Tree) -> Tree:
    return {k: _copy(v) if isinstance(v, dict) else np.array(v) for k, v in tree.items()}


def flatten(tree: Tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested tree -> {"modules_actor/network/Dense_0/kernel": array}, the names used in files."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> Tree:
    tree: Tree = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
