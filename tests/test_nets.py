"""The stacked ensemble equals E separate MLPs; the actor's log-probabilities are consistent."""

import math

import torch
from torch import nn

from wsrl.config import NetConfig
from wsrl.nets import ActorCritic, Critic, EnsembleLayerNorm, EnsembleLinear, TanhGaussianActor


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
            ln = nn.LayerNorm(lin.weight.shape[2])
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


def test_ensemble_members_are_initialised_differently_and_orthogonally():
    critic = Critic(5, 3, NetConfig(critic_hidden=(16,), ensemble_size=3))
    w = critic.mlp.hidden[0].weight.data  # [E, in, out]
    assert not torch.allclose(w[0], w[1])
    gram = w[0] @ w[0].T  # in=8 rows of an orthogonal [8, 16] map, gain sqrt(2)
    torch.testing.assert_close(gram, 2.0 * torch.eye(8), rtol=1e-4, atol=1e-4)


def test_sampled_log_prob_matches_log_prob_of_the_action():
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, NetConfig(actor_hidden=(16,)))
    for p in actor.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    obs = torch.randn(64, 4)
    actions, log_prob = actor.sample(obs)
    keep = actions.abs().max(-1).values < 0.999  # away from the clip used for dataset actions
    torch.testing.assert_close(actor.log_prob(obs, actions)[keep], log_prob[keep], rtol=1e-3, atol=1e-3)


def test_log_prob_against_torch_distributions():
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, NetConfig(actor_hidden=(16,)))
    obs, actions = torch.randn(5, 4), torch.rand(5, 2) * 1.8 - 0.9
    mean, log_std = actor(obs)
    base = torch.distributions.Normal(mean, log_std.exp())
    dist = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    torch.testing.assert_close(actor.log_prob(obs, actions), dist.log_prob(actions).sum(-1), rtol=1e-4, atol=1e-4)


def test_dataset_actions_at_the_bound_have_finite_log_prob():
    actor = TanhGaussianActor(4, 2, NetConfig(actor_hidden=(16,)))
    assert torch.isfinite(actor.log_prob(torch.zeros(2, 4), torch.tensor([[1.0, -1.0], [1.0, 1.0]]))).all()


def test_initial_policy_is_near_zero_mean_unit_std_and_temperature_set():
    model = ActorCritic(4, 2, NetConfig(actor_hidden=(32, 32)), init_temperature=1.0, init_cql_alpha=5.0)
    mean, log_std = model.actor(torch.randn(100, 4))
    assert mean.abs().max() < 0.2 and log_std.abs().max() < 0.2
    assert math.isclose(model.log_alpha.exp().item(), 1.0, rel_tol=1e-6)
    assert math.isclose(model.cql_log_alpha.exp().item(), 5.0, rel_tol=1e-6)
