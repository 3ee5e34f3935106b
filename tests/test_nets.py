"""The stacked ensemble equals E separate MLPs; the actor's log-probabilities are consistent."""

import math

import pytest
import torch
from torch import nn

from wsrl.config import NetConfig
from wsrl.nets import LAYER_NORM_EPS, Actor, ActorCritic, Critic, EnsembleLayerNorm, EnsembleLinear


def _separate_mlp(critic: Critic, e: int, layer_norm: bool) -> nn.Sequential:
    """A plain nn.Linear MLP holding member e's weights."""
    layers = []
    linears = [m for m in critic.mlp.hidden if isinstance(m, EnsembleLinear)]
    norms = [m for m in critic.mlp.hidden if isinstance(m, EnsembleLayerNorm)]
    for i, lin in enumerate(linears):
        dense = nn.Linear(lin.weight.shape[1], lin.weight.shape[2])
        dense.weight.data, dense.bias.data = lin.weight[e].T.clone(), lin.bias[e, 0].clone()
        layers.append(dense)
        if layer_norm:
            ln = nn.LayerNorm(lin.weight.shape[2], eps=LAYER_NORM_EPS)
            ln.weight.data, ln.bias.data = norms[i].weight[e, 0].clone(), norms[i].bias[e, 0].clone()
            layers.append(ln)
        layers.append(nn.ReLU())
    head = critic.mlp.head
    h = e if head.weight.shape[0] > 1 else 0
    out = nn.Linear(head.weight.shape[1], 1)
    out.weight.data, out.bias.data = head.weight[h].T.clone(), head.bias[h, 0].clone()
    return nn.Sequential(*layers, out)


def test_stacked_ensemble_equals_separate_mlps():
    for layer_norm in (True, False):
        for shared_head in (False, True):
            torch.manual_seed(0)
            critic = Critic(5, 3, NetConfig(critic_hidden=(16, 8), ensemble_size=4, layer_norm=layer_norm,
                                            shared_critic_head=shared_head))
            for p in critic.parameters():  # move LayerNorm/bias params off their trivial init
                p.data.add_(0.1 * torch.randn_like(p))
            obs, act = torch.randn(7, 5), torch.randn(7, 3)
            q = critic(obs, act)
            assert q.shape == (4, 7)
            for e in range(4):
                ref = _separate_mlp(critic, e, layer_norm)(torch.cat([obs, act], -1))[:, 0]
                torch.testing.assert_close(q[e], ref, rtol=1e-5, atol=1e-5)


def test_critic_handles_extra_batch_axes():
    critic = Critic(5, 3, NetConfig(critic_hidden=(8,), ensemble_size=3))
    obs, act = torch.randn(4, 6, 5), torch.randn(4, 6, 3)
    torch.testing.assert_close(critic(obs, act)[:, 2, 5], critic(obs[2, 5:6], act[2, 5:6])[:, 0])


def test_init_follows_the_release():
    # Hidden layers orthogonal with gain sqrt(2), the last hidden layer with gain 1e-2, the head sqrt(2).
    critic = Critic(5, 3, NetConfig(critic_hidden=(16, 16), ensemble_size=3))
    w = critic.mlp.hidden[0].weight.data  # [E, in, out]
    assert not torch.allclose(w[0], w[1])
    torch.testing.assert_close(w[0] @ w[0].T, 2.0 * torch.eye(8), rtol=1e-4, atol=1e-4)  # 8 rows of an orthogonal map
    last = critic.mlp.hidden[3].weight.data[1]  # [16, 16]
    torch.testing.assert_close(last @ last.T, 1e-4 * torch.eye(16), rtol=1e-4, atol=1e-8)
    head = critic.mlp.head.weight.data[2]  # [16, 1]
    assert head.pow(2).sum().item() == pytest.approx(2.0, rel=1e-4)
    # No final scale (the release on kitchen): the last hidden layer is like the others.
    plain = Critic(5, 3, NetConfig(critic_hidden=(16, 16), critic_final_scale=None)).mlp.hidden[3].weight.data[0]
    torch.testing.assert_close(plain @ plain.T, 2.0 * torch.eye(16), rtol=1e-4, atol=1e-4)


def test_var_scaling_init_is_glorot_uniform():
    # flax variance_scaling(1, fan_avg, uniform): U(-l, l) with l = sqrt(3 / ((in + out) / 2)).
    torch.manual_seed(0)
    w = Critic(61, 3, NetConfig(critic_hidden=(64, 64), init="var_scaling", layer_norm=False)).mlp.hidden[0].weight.data
    limit = math.sqrt(3 / ((64 + 64) / 2))
    assert w.abs().max().item() <= limit and w.abs().max().item() > 0.95 * limit
    assert w.var().item() == pytest.approx(limit ** 2 / 3, rel=0.1)


def test_sampled_log_prob_matches_log_prob_of_the_action():
    torch.manual_seed(0)
    actor = Actor(4, 2, NetConfig(actor_hidden=(16,)))
    for p in actor.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    obs = torch.randn(64, 4)
    actions, log_prob = actor.sample(obs)
    keep = actions.abs().max(-1).values < 0.999  # away from the clip used for dataset actions
    torch.testing.assert_close(actor.log_prob(obs, actions)[keep], log_prob[keep], rtol=1e-3, atol=1e-3)


def test_log_prob_against_torch_distributions():
    torch.manual_seed(0)
    actor = Actor(4, 2, NetConfig(actor_hidden=(16,)))
    obs, actions = torch.randn(5, 4), torch.rand(5, 2) * 1.8 - 0.9
    mean, log_std = actor(obs)
    base = torch.distributions.Normal(mean, log_std.exp())
    dist = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    torch.testing.assert_close(actor.log_prob(obs, actions), dist.log_prob(actions).sum(-1), rtol=1e-4, atol=1e-4)


def test_dataset_actions_at_the_bound_have_finite_log_prob():
    actor = Actor(4, 2, NetConfig(actor_hidden=(16,)))
    assert torch.isfinite(actor.log_prob(torch.zeros(2, 4), torch.tensor([[1.0, -1.0], [1.0, 1.0]]))).all()


def test_initial_policy_is_near_zero_mean_unit_std_and_temperature_set():
    # Without LayerNorm the 1e-2 last hidden layer starts the policy near mean 0, std 1 (with it,
    # LayerNorm rescales that layer's output, in the release as here).
    model = ActorCritic(4, 2, NetConfig(actor_hidden=(32, 32), layer_norm=False), init_temperature=1.0, init_cql_alpha=5.0)
    mean, log_std = model.actor(torch.randn(100, 4))
    assert mean.abs().max() < 0.2 and log_std.abs().max() < 0.2
    assert math.isclose(model.temperature().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(model.cql_alpha().item(), 5.0, rel_tol=1e-6)
    exact = ActorCritic(4, 2, NetConfig(actor_hidden=(8,), release_exact=True), init_temperature=1.0, init_cql_alpha=5.0)
    assert math.isclose(exact.log_alpha.item(), math.log(math.e - 1), rel_tol=1e-6)  # softplus^-1(1)
    assert math.isclose(exact.cql_alpha().item(), 5.0, rel_tol=1e-6)


def test_uniform_std_is_one_parameter_independent_of_the_state():
    actor = Actor(4, 3, NetConfig(actor_hidden=(16,), actor_std="uniform"))
    assert actor.log_std.shape == (3,) and actor.mlp.head.weight.shape[-1] == 3
    actor.log_std.data = torch.tensor([0.5, -1.0, 0.0])
    _, log_std = actor(torch.randn(6, 4))
    torch.testing.assert_close(log_std, torch.tensor([0.5, -1.0, 0.0]).expand(6, 3))


def test_untanhed_gaussian_actor_log_prob_and_clipped_actions():
    torch.manual_seed(0)
    actor = Actor(4, 2, NetConfig(actor_hidden=(16,), actor_tanh=False, actor_std="uniform"))
    actor.log_std.data.fill_(1.0)
    obs, actions = torch.randn(5, 4), torch.randn(5, 2)
    mean, log_std = actor(obs)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(actor.log_prob(obs, actions), ref)
    sampled, log_prob = actor.sample(obs)
    torch.testing.assert_close(log_prob, torch.distributions.Normal(mean, log_std.exp()).log_prob(sampled).sum(-1))
    acted = actor.act(torch.randn(500, 4), deterministic=False)
    assert acted.abs().max() <= 1.0 and (acted.abs() == 1.0).any()  # std e: many samples clipped


def test_dropout_is_off_when_acting():
    torch.manual_seed(0)
    actor = Actor(4, 2, NetConfig(actor_hidden=(64, 64), actor_dropout=0.5))
    obs = torch.randn(3, 4)
    actor.eval()
    torch.testing.assert_close(actor.act(obs, True), actor.act(obs, True))
    actor.train()
    assert not torch.allclose(actor(obs)[0], actor(obs)[0])
