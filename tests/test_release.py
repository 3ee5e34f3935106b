"""wsrl.release: parameters of the authors' JAX release <-> wsrl's ActorCritic, no JAX needed.

tests/data/release_params.json holds the release's parameter names and shapes of three configs
(hidden sizes 16), dumped once from the release itself by
``scripts/parity/release_side.py --dump-shapes``.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsrl.config import NetConfig
from wsrl.nets import ActorCritic
from wsrl.release import flatten, from_release, to_release, unflatten

FIXTURES = json.loads((Path(__file__).parent / "data" / "release_params.json").read_text())
# wsrl's NetConfig for each fixture's release config (train_config.py, ensemble_config.py).
NETS = {
    "sac_locomotion_wsrl": dict(ensemble_size=10, subsample_size=2, layer_norm=True),
    "calql_antmaze_cql_redq": dict(ensemble_size=10, subsample_size=2, layer_norm=True, actor_std="uniform"),
    "iql_locomotion_iql": dict(ensemble_size=2, subsample_size=2, layer_norm=False, actor_std="uniform",
                               actor_tanh=False),
}
LN_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon


def _net(name: str, shared_head: bool, release_exact: bool = False) -> NetConfig:
    fx = FIXTURES[name]
    return NetConfig(critic_hidden=tuple(fx["critic_hidden"]), actor_hidden=tuple(fx["actor_hidden"]),
                     shared_critic_head=shared_head, release_exact=release_exact, **NETS[name])


def _modules(name: str) -> tuple[str, ...]:
    return tuple(sorted({path.split("/")[0] for path in FIXTURES[name]["params"]}))


def _model(name: str, net: NetConfig) -> ActorCritic:
    torch.manual_seed(0)
    fx = FIXTURES[name]
    return ActorCritic(fx["obs_dim"], fx["act_dim"], net, init_temperature=0.3, init_cql_alpha=2.0)


def _random_release(name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return unflatten({path: rng.standard_normal(shape).astype(np.float32)
                      for path, shape in FIXTURES[name]["params"].items()})


@pytest.mark.parametrize("name", list(FIXTURES))
def test_names_and_shapes_are_the_releases(name):
    net = _net(name, shared_head=True)
    params, target = to_release(_model(name, net).state_dict(), net, _modules(name))
    assert {k: list(v.shape) for k, v in flatten(params).items()} == FIXTURES[name]["params"]
    assert {k: list(v.shape) for k, v in flatten(target).items()} == FIXTURES[name]["params"]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("release_exact", [False, True])
@pytest.mark.parametrize("shared_head", [True, False])
@pytest.mark.parametrize("name", list(FIXTURES))
def test_release_round_trip_is_exact(name, shared_head, release_exact):
    net = _net(name, shared_head, release_exact)
    params, target = _random_release(name, 1), _random_release(name, 2)
    sd = from_release(params, target, net, _model(name, net).state_dict())
    params_back, target_back = to_release(sd, net, _modules(name))
    flat, back = flatten(params), flatten(params_back)
    for path, value in flat.items():
        if value.ndim or release_exact:  # release_exact stores the release's softplus^-1 as it is
            np.testing.assert_array_equal(back[path], value, err_msg=path)
        else:  # through log(alpha) in float32: the same alpha, not always the same bits
            assert _softplus(float(back[path])) == pytest.approx(_softplus(float(value)), rel=1e-6), path
    for path, value in flatten(target["modules_critic"]).items():
        np.testing.assert_array_equal(flatten(target_back["modules_critic"])[path], value, err_msg=path)


@pytest.mark.parametrize("release_exact", [False, True])
@pytest.mark.parametrize("name", list(FIXTURES))
def test_wsrl_round_trip_is_exact(name, release_exact):
    net = _net(name, True, release_exact)
    sd = _model(name, net).state_dict()
    back = from_release(*to_release(sd, net, _modules(name)), net, sd)
    for key, value in sd.items():
        if value.dim() or release_exact:
            assert torch.equal(back[key], value), key
        else:
            torch.testing.assert_close(back[key].exp(), value.exp(), rtol=1e-6, atol=0)


def _release_mlp(tree: dict, x: np.ndarray, layer_norm: bool) -> np.ndarray:
    """The release's MLP (networks/mlp.py: Dense -> LayerNorm -> ReLU per layer), in numpy;
    kernels [in, out] or, vmapped over the critic ensemble, [E, in, out]."""
    layers = sum(name.startswith("Dense_") for name in tree["network"])
    for i in range(layers):
        dense = tree["network"][f"Dense_{i}"]
        bias = dense["bias"][:, None] if dense["bias"].ndim == 2 else dense["bias"]
        x = x @ dense["kernel"] + bias
        if layer_norm:
            norm = tree["network"][f"LayerNorm_{i}"]
            scale, shift = ((norm[k][:, None] if norm[k].ndim == 2 else norm[k]) for k in ("scale", "bias"))
            mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
            x = (x - mean) / np.sqrt(var + LN_EPS) * scale + shift
        x = np.maximum(x, 0.0)
    return x


@pytest.mark.parametrize("shared_head", [True, False])
def test_converted_weights_are_where_the_forward_pass_uses_them(shared_head):
    name = "sac_locomotion_wsrl"
    net = _net(name, shared_head)
    params, target = _random_release(name, 3), _random_release(name, 4)
    model = _model(name, net)
    model.load_state_dict(from_release(params, target, net, model.state_dict()))
    # Member 3's second Dense (hidden.0 Linear, .1 LayerNorm, .2 ReLU, .3 Linear) by hand.
    assert torch.equal(model.critic.mlp.hidden[3].weight[3],
                       torch.as_tensor(params["modules_critic"]["network"]["Dense_1"]["kernel"][3]))

    rng = np.random.default_rng(5)
    obs = rng.standard_normal((7, 5)).astype(np.float32)
    act = rng.uniform(-1, 1, (7, 3)).astype(np.float32)
    with torch.no_grad():
        q = model.critic(torch.as_tensor(obs), torch.as_tensor(act)).numpy()
        q_target = model.target_critic(torch.as_tensor(obs), torch.as_tensor(act)).numpy()
        mean, log_std = (t.numpy() for t in model.actor(torch.as_tensor(obs)))
    for tree, wsrl_q in ((params, q), (target, q_target)):
        critic = tree["modules_critic"]
        hidden = _release_mlp(critic, np.concatenate([obs, act], -1), layer_norm=True)  # [E, B, h]
        release_q = (hidden @ critic["Dense_0"]["kernel"] + critic["Dense_0"]["bias"])[..., 0]
        # float32 rounding only; a misplaced weight is an O(1) difference.
        np.testing.assert_allclose(wsrl_q, release_q, rtol=1e-5, atol=1e-6)
    actor = params["modules_actor"]
    hidden = _release_mlp(actor, obs, layer_norm=True)
    np.testing.assert_allclose(mean, hidden @ actor["Dense_0"]["kernel"] + actor["Dense_0"]["bias"], rtol=1e-5, atol=1e-6)
    release_log_std = np.log(np.clip(np.exp(hidden @ actor["Dense_1"]["kernel"] + actor["Dense_1"]["bias"]), 1e-5, 10.0))
    np.testing.assert_allclose(log_std, release_log_std, rtol=1e-5, atol=1e-6)


def test_iql_value_net_and_state_independent_std_convert():
    name = "iql_locomotion_iql"
    net = _net(name, shared_head=True)
    params = _random_release(name, 6)
    model = _model(name, net)
    model.load_state_dict(from_release(params, params, net, model.state_dict()))
    obs = np.random.default_rng(7).standard_normal((4, 5)).astype(np.float32)
    value = params["modules_value"]
    release_v = (_release_mlp(value, obs, layer_norm=False) @ value["Dense_0"]["kernel"] + value["Dense_0"]["bias"])[:, 0]
    with torch.no_grad():
        np.testing.assert_allclose(model.value(torch.as_tensor(obs)).numpy(), release_v, rtol=1e-5, atol=1e-5)
        _, log_std = model.actor(torch.as_tensor(obs))
    np.testing.assert_allclose(log_std.numpy(), np.broadcast_to(np.clip(params["modules_actor"]["log_stds"], math.log(1e-5),
                                                                        math.log(10.0)), (4, 3)), rtol=1e-6)


@pytest.mark.parametrize("release_exact", [False, True])
def test_multipliers_are_stored_as_softplus_inverse(release_exact):
    name = "calql_antmaze_cql_redq"
    net = _net(name, True, release_exact)
    params, _ = to_release(_model(name, net).state_dict(), net, _modules(name))
    assert _softplus(float(params["modules_temperature"]["lagrange"])) == pytest.approx(0.3, rel=1e-6)
    assert _softplus(float(params["modules_cql_alpha_lagrange"]["lagrange"])) == pytest.approx(2.0, rel=1e-6)


def test_per_member_heads_that_differ_are_refused():
    name = "sac_locomotion_wsrl"
    net = _net(name, shared_head=False)
    with pytest.raises(ValueError, match="shares one output layer"):
        to_release(_model(name, net).state_dict(), net, _modules(name))
