"""The release's half of scripts/parity_release.py; runs under the release's own Python.

Imports the authors' JAX release (zhouzypaul/wsrl, 891ee35) from --release-src (its package
is also called ``wsrl``, hence a separate process), builds the agent of one case from the
release's own configs with the small hidden sizes of the case, loads the weights and batch that
the wsrl side wrote, runs one ``update`` or ``update_high_utd`` under ``jax.disable_jit()``, and
writes back the updated parameters, every update call's losses and every optimizer's gradients.

Random draws: with JIT off every ``jax.random`` call runs eagerly, so ``normal`` (the policy
samples, via distrax), ``uniform`` (CQL's random actions), ``randint`` (critic subsample
indices) and ``bernoulli`` (flax's dropout masks) are replaced by a replay of the arrays in ``draws.npz``, chosen by the draw's role,
which is read off the call stack (which loss function, which observations). The roles and their
layouts are documented in scripts/parity_release.py. Flax's own initialiser calls (its
shape check of every parameter under ``jax.eval_shape`` during ``apply``) pass through.

Standalone use: ``--dump-shapes OUT.json`` writes the release's parameter names and shapes of
the fixture configs, the source of tests/data/release_params.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
from pathlib import Path

FIXTURES = {
    # name: (agent, train_config.py entry, finetune.py --use_redq, critic hidden, actor hidden)
    "sac_locomotion_wsrl": ("sac", "locomotion_wsrl", False, [16, 16], [16, 16]),
    "calql_antmaze_cql_redq": ("calql", "antmaze_cql", True, [16, 16, 16, 16], [16, 16]),
    "iql_locomotion_iql": ("iql", "locomotion_iql", False, [16, 16], [16, 16]),
}
OBS_DIM, ACT_DIM = 5, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release-src", required=True, help="checkout of zhouzypaul/wsrl")
    parser.add_argument("--dir", help="exchange folder written by scripts/parity_release.py")
    parser.add_argument("--dump-shapes", help="write the fixture configs' parameter names and shapes here")
    args = parser.parse_args()
    # Both packages are named wsrl: only the release's may be importable here.
    sys.path[:] = [args.release_src] + [p for p in sys.path if p not in ("", os.getcwd())]
    if args.dump_shapes:
        dump_shapes(Path(args.dump_shapes))
    else:
        run_case(Path(args.dir))


def make_agent(algo: str, config: str, redq: bool, critic_hidden: list[int], actor_hidden: list[int],
               observations, actions):
    import jax
    from experiments.configs.ensemble_config import add_redq_config
    from experiments.configs.train_config import get_config
    from wsrl.agents import agents

    kwargs = get_config(config).agent_kwargs
    if redq:
        kwargs = add_redq_config(kwargs)
    kwargs = kwargs.to_dict()
    kwargs["critic_network_kwargs"]["hidden_dims"] = list(critic_hidden)
    kwargs["policy_network_kwargs"]["hidden_dims"] = list(actor_hidden)
    return agents[algo].create(rng=jax.random.PRNGKey(0), observations=observations, actions=actions,
                               encoder_def=None, **kwargs)


def flatten(tree) -> dict:
    """{"modules_actor": {"network": ...}} -> {"modules_actor/network/...": array}, as in the files."""
    import numpy as np
    from flax.traverse_util import flatten_dict

    return {k: np.asarray(v) for k, v in flatten_dict(dict(tree), sep="/").items()}


def unflatten(flat: dict) -> dict:
    from flax.traverse_util import unflatten_dict

    return unflatten_dict(flat, sep="/")


def dump_shapes(out: Path) -> None:
    import numpy as np

    obs, act = np.zeros((2, OBS_DIM), np.float32), np.zeros((2, ACT_DIM), np.float32)
    shapes = {}
    for name, (algo, config, redq, critic_hidden, actor_hidden) in FIXTURES.items():
        agent = make_agent(algo, config, redq, critic_hidden, actor_hidden, obs, act)
        shapes[name] = {"agent": algo, "config": config, "use_redq": redq, "obs_dim": OBS_DIM, "act_dim": ACT_DIM,
                        "critic_hidden": critic_hidden, "actor_hidden": actor_hidden,
                        "params": {k: list(v.shape) for k, v in flatten(agent.state.params).items()}}
    text = json.dumps(shapes, indent=1)
    out.write_text(re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group())), text) + "\n")  # one line a shape


class Replay:
    """Stands in for jax.random.{normal,uniform,randint}: returns the recorded draw of the role."""

    def __init__(self, draws: dict, originals: dict):
        self.draws, self.originals = draws, originals
        self.counts: dict[str, int] = {}
        self.log: list[dict] = []

    def patched(self, kind: str):
        def draw(key, *args, **kwargs):
            if "/jax/_src/nn/initializers.py" in sys._getframe(1).f_code.co_filename:
                return self.originals[kind](key, *args, **kwargs)  # flax's param shape check
            # shape by keyword (distrax, cql.py, flax's dropout) or positionally (randint in sac.py)
            shape, rest = (kwargs.pop("shape"), args) if "shape" in kwargs else (args[0], args[1:])
            return self.replay(kind, tuple(shape), rest, kwargs)
        return draw

    def replay(self, kind: str, shape: tuple, args: tuple, kwargs: dict):
        import jax.numpy as jnp
        import numpy as np

        role = self.role(kind)
        k = self.counts.get(role, 0)
        self.counts[role] = k + 1
        name = f"{role}/{k}"
        if name not in self.draws:
            raise RuntimeError(f"the release draws {name} {shape}, which draws.npz lacks")
        size = int(np.prod(shape))
        flat = self.draws[name]
        if flat.size < size:
            raise RuntimeError(f"{name}: {flat.size} values recorded, the release needs {shape}")
        self.log.append({"role": role, "index": k, "kind": kind, "shape": list(shape)})
        if kind == "randint":
            minval, maxval = (list(args) + [kwargs.get("minval"), kwargs.get("maxval")])[:2]
            values = flat[:size].reshape(shape)
            assert minval == 0 and np.all(values < maxval), (name, minval, maxval)
            return jnp.asarray(values, dtype=jnp.int32)
        if kind == "bernoulli":  # the recorded keep masks, 1 = kept
            return jnp.asarray(flat[:size].reshape(shape).astype(bool))
        if kind == "uniform":
            assert kwargs.get("minval") == -1.0 and kwargs.get("maxval") == 1.0, kwargs  # cql.py:56-61
        return jnp.asarray(flat[:size].reshape(shape), dtype=jnp.float32)

    @staticmethod
    def role(kind: str) -> str:
        frames = [f for f in inspect.stack(context=0) if "/wsrl/agents/" in f.filename]
        names = [f.function for f in frames]
        if kind == "bernoulli":
            if names and names[0] == "forward_policy":
                return "actor_dropout"  # one draw per hidden layer of the policy (mlp.py:39-40)
            raise RuntimeError(f"unmapped release dropout in {names}")
        if "_get_cql_q_diff" in names:
            # cql.py:300-302: the Lagrange loss recomputes the CQL gap with its own draws.
            prefix = "alpha" if "cql_alpha_loss_fn" in names else "cql"
            if kind == "normal":
                sample = frames[names.index("forward_policy_and_sample")].frame.f_locals["obs"]
                batch = frames[names.index("_get_cql_q_diff")].frame.f_locals["batch"]
                return f"{prefix}_pi" if sample is batch["observations"] else f"{prefix}_next_pi"
            return {"uniform": f"{prefix}_uniform", "randint": f"{prefix}_members"}[kind]
        if "_compute_next_actions" in names:
            if "critic_loss_fn" in names:
                return "td_next"
            if "temperature_loss_fn" in names:
                return "temperature_next"
        if kind == "normal" and "policy_loss_fn" in names:
            return "actor_pi"
        if kind == "randint" and "critic_loss_fn" in names:
            return "td_members"
        raise RuntimeError(f"unmapped release draw {kind} in {names}")


def scalars(info: dict) -> dict:
    """Every scalar of one update call's info, e.g. {"critic/critic_loss": 1.2}."""
    import numpy as np
    from flax.traverse_util import flatten_dict

    return {k: float(v) for k, v in flatten_dict(dict(info), sep="/").items() if v is not None and np.ndim(v) == 0}


def run_case(folder: Path) -> None:
    import flax
    import jax
    import numpy as np
    from wsrl.agents.iql import IQLAgent
    from wsrl.agents.sac import SACAgent
    from wsrl.common.common import JaxRLTrainState

    case = json.loads((folder / "case.json").read_text())
    batch = dict(np.load(folder / "batch.npz"))
    params = unflatten(dict(np.load(folder / "params.npz")))
    target = unflatten(dict(np.load(folder / "target_params.npz")))
    draws = dict(np.load(folder / "draws.npz"))

    agent = make_agent(case["agent"], case["config"], case["use_redq"], case["critic_hidden"], case["actor_hidden"],
                       batch["observations"], batch["actions"])
    expected = {k: v.shape for k, v in flatten(agent.state.params).items()}
    given = {k: v.shape for k, v in flatten(params).items()}
    if expected != given:
        raise SystemExit(f"parameter tree mismatch:\n release {sorted(expected.items())}\n given {sorted(given.items())}")
    as_tree = flax.core.freeze if isinstance(agent.state.params, flax.core.FrozenDict) else dict
    params, target = jax.tree_map(np.asarray, as_tree(params)), jax.tree_map(np.asarray, as_tree(target))
    state = agent.state
    # A fresh optimizer state for the given weights, as wsrl's side starts from.
    state = state.replace(params=params, target_params=target,
                          opt_states=state._tx_tree_map(lambda tx: tx.init(params), state.txs))
    agent = agent.replace(state=state)

    infos: list[dict] = []
    agent_cls = IQLAgent if case["agent"] == "iql" else SACAgent

    def recorded(update):
        def call(self, *args, **kwargs):
            new, info = update(self, *args, **kwargs)
            infos.append(scalars(info))
            return new, info
        return call

    # Every optimizer's gradients of every update call (zeros where a network sits the call out).
    gradients: dict[str, np.ndarray] = {}
    apply_gradients = JaxRLTrainState.apply_gradients

    def recorded_gradients(self, *, grads):
        for tx, tree in grads.items():
            for path, value in flatten(tree).items():
                gradients[f"{len(infos)}/{tx}/{path}"] = value
        return apply_gradients(self, grads=grads)

    originals = {kind: getattr(jax.random, kind) for kind in ("normal", "uniform", "randint", "bernoulli")}
    replay = Replay(draws, originals)
    update = agent_cls.update
    try:
        agent_cls.update = recorded(update)
        JaxRLTrainState.apply_gradients = recorded_gradients
        for kind in originals:
            setattr(jax.random, kind, replay.patched(kind))
        with jax.disable_jit():
            if case["update"] == "update_high_utd":
                agent, _ = agent.update_high_utd(batch, utd_ratio=case["utd"])
            else:
                agent, _ = agent.update(batch)
    finally:
        agent_cls.update = update
        JaxRLTrainState.apply_gradients = apply_gradients
        for kind, fn in originals.items():
            setattr(jax.random, kind, fn)

    np.savez(folder / "release_params.npz", **flatten(agent.state.params))
    np.savez(folder / "release_target_params.npz", **flatten(agent.state.target_params))
    np.savez(folder / "release_grads.npz", **gradients)
    (folder / "release_out.json").write_text(json.dumps({"infos": infos, "draws": replay.log}, indent=1))


if __name__ == "__main__":
    main()
