"""Each loss against a value computed by hand on a 2-3 sample batch."""

import math

import pytest
import torch

from wsrl.agents.cql import CQL, CalQL, cql_penalty
from wsrl.agents.draws import Draws
from wsrl.agents.iql import awr_weights, expectile_loss
from wsrl.agents.release_update import ReleaseDraws, ReleaseUpdate, update_for
from wsrl.agents.sac import SAC, td_target, temperature_loss
from wsrl.config import AgentConfig, NetConfig
from wsrl.nets import ActorCritic


def test_td_target_masks_only_terminals():
    rewards, masks, next_q = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([10.0, 10.0, 4.0])
    expected = [1.0 + 0.9 * 10.0, 2.0, -1.0 + 0.9 * 4.0]
    assert td_target(rewards, masks, next_q, 0.9).tolist() == pytest.approx(expected)


def test_temperature_loss_sign():
    # Entropy -log pi = 0.5 is below the target 1.0: the loss must push log_alpha up (negative gradient).
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    loss = temperature_loss(log_alpha.exp(), torch.tensor([-0.5, -0.5]), target_entropy=1.0)
    assert loss.item() == pytest.approx(2.0 * (0.5 - 1.0))
    loss.backward()
    assert log_alpha.grad.item() < 0


def test_cql_penalty_importance_sampled_by_hand():
    # E=1, B=2, n=1, |A|=2: uniform log-density is 2*log(0.5).
    q_data = torch.tensor([[1.0, 2.0]])
    q_rand, q_pi, q_next = torch.tensor([[[0.5], [1.0]]]), torch.tensor([[[2.0], [0.0]]]), torch.tensor([[[1.0], [3.0]]])
    lp_pi, lp_next = torch.tensor([[0.1], [-0.2]]), torch.tensor([[0.3], [0.0]])
    got = cql_penalty(q_data, q_rand, q_pi, q_next, lp_pi, lp_next, act_dim=2, importance_sample=True, temperature=1.0)
    d = 2 * math.log(0.5)
    s0 = math.log(math.exp(0.5 - d) + math.exp(1.0 - 0.3) + math.exp(2.0 - 0.1)) - 1.0
    s1 = math.log(math.exp(1.0 - d) + math.exp(3.0 - 0.0) + math.exp(0.0 + 0.2)) - 2.0
    assert got[0].tolist() == pytest.approx([s0, s1], abs=1e-5)


def test_cql_penalty_without_importance_sampling_includes_data_q():
    q_data = torch.tensor([[1.0, 2.0]])
    q_rand, q_pi, q_next = torch.tensor([[[0.5], [1.0]]]), torch.tensor([[[2.0], [0.0]]]), torch.tensor([[[1.0], [3.0]]])
    lp = torch.zeros(2, 1)
    got = cql_penalty(q_data, q_rand, q_pi, q_next, lp, lp, act_dim=2, importance_sample=False, temperature=2.0)
    # A log-mean-exp over the 3n + 1 = 4 samples (the release subtracts log 4 inside).
    s0 = 2.0 * math.log(sum(math.exp(v / 2.0) for v in (0.5, 1.0, 1.0, 2.0)) / 4) - 1.0
    s1 = 2.0 * math.log(sum(math.exp(v / 2.0) for v in (1.0, 2.0, 3.0, 0.0)) / 4) - 2.0
    assert got[0].tolist() == pytest.approx([s0, s1], abs=1e-5)


def test_calql_bounds_policy_q_by_mc_return():
    model = ActorCritic(3, 2, NetConfig(critic_hidden=(8,), actor_hidden=(8,), ensemble_size=2), 1.0, 1.0)
    agent = CalQL(model, AgentConfig(cql_n_actions=2), NetConfig(ensemble_size=2))
    q_random = torch.tensor([[[-9.0, -9.0], [-9.0, -9.0]]])  # E=1, B=2, n=2: never bounded
    q_pi = torch.tensor([[[0.0, 5.0], [1.0, -3.0]]])
    q_next = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]]])
    mc = {"mc_returns": torch.tensor([1.0, -2.0])}
    bounded, metrics = agent.bound_policy_q(torch.cat([q_random, q_pi, q_next], -1), mc)
    assert bounded.tolist() == [[[-9.0, -9.0, 1.0, 5.0, 1.0, 2.0], [-9.0, -9.0, 1.0, -2.0, 4.0, 0.0]]]
    # 3 of the 12 sampled Q-values were below their bound (the release counts all 3n actions).
    assert metrics["calql/bound_rate"].item() == pytest.approx(3 / 12)


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5])  # Q - V
    expected = (0.7 * 4.0 + 0.3 * 1.0 + 0.7 * 0.25) / 3
    assert expectile_loss(diff, 0.7).item() == pytest.approx(expected)


def test_awr_weights_clipped():
    got = awr_weights(torch.tensor([0.0, 1.0, 10.0]), temperature=3.0, max_weight=100.0)
    assert got.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0])


def _constant_critics(model: ActorCritic, values: list[float]) -> None:
    """Make Q_e(s, a) = values[e] for every input: zero head weights, per-member bias."""
    for critic in (model.critic, model.target_critic):
        critic.mlp.head.weight.data.zero_()
        critic.mlp.head.bias.data[:, 0, 0] = torch.tensor(values)


def _sac(ensemble=4, subsample=2, actor_lr=1e-4):
    net = NetConfig(critic_hidden=(8,), actor_hidden=(8,), ensemble_size=ensemble, subsample_size=subsample)
    model = ActorCritic(3, 2, net, init_temperature=0.5, init_cql_alpha=1.0)
    return SAC(model, AgentConfig(discount=0.5, actor_lr=actor_lr), net), model


def test_td_target_is_min_over_two_random_target_members():
    agent, model = _sac()
    _constant_critics(model, [0.0, 10.0, 20.0, 30.0])
    batch = {"observations": torch.zeros(3, 3), "actions": torch.zeros(3, 2), "rewards": torch.tensor([1.0, 1.0, 1.0]),
             "next_observations": torch.zeros(3, 3), "masks": torch.tensor([1.0, 0.0, 1.0])}
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        target = agent.critic_target(batch)
        assert target[1].item() == 1.0  # terminal: no bootstrap
        seen.add(round((target[0].item() - 1.0) / 0.5, 3))
    # The min of 2 of {0, 10, 20, 30} is 0, 10 or 20; never 30, and not always 0 (min over all).
    assert seen == {0.0, 10.0, 20.0}


def test_actor_loss_uses_min_over_all_critics():
    agent, model = _sac()
    _constant_critics(model, [3.0, -2.0, 7.0, 1.0])
    obs = torch.zeros(2, 3)
    torch.manual_seed(1)
    loss, log_prob, _ = agent.actor_loss({"observations": obs})
    assert loss.item() == pytest.approx((0.5 * log_prob - (-2.0)).mean().item(), abs=1e-5)


def test_actor_step_leaves_critic_gradients_untouched():
    agent, model = _sac()
    loss, _, _ = agent.actor_loss({"observations": torch.randn(5, 3)})
    agent._step("actor", loss)
    assert all(p.grad is None for p in model.critic.parameters())
    assert any(p.grad is not None for p in model.actor.parameters())


def test_bc_warm_start_clones_data_actions_and_trains_the_critic():
    # The data always takes action (0.6, -0.4): BC steps must move the actor's mean action there
    # (a sign error would push it to the bounds), while the critic keeps taking TD steps.
    agent, model = _sac(actor_lr=1e-2)  # fast, so 400 steps suffice
    torch.manual_seed(0)
    obs = torch.randn(1, 64, 3)
    data_action = torch.tensor([0.6, -0.4])
    batch = {"observations": obs, "actions": data_action.expand(1, 64, 2), "rewards": torch.ones(1, 64),
             "next_observations": obs, "masks": torch.ones(1, 64)}
    critic_before = [p.detach().clone() for p in model.critic.parameters()]
    for _ in range(400):
        agent.update(batch, behavior_cloning=True)
    mean_action = torch.tanh(model.actor(obs[0])[0])
    assert (mean_action - data_action).abs().max().item() < 0.1
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, model.critic.parameters()))


def test_bc_actor_loss_by_hand():
    agent, model = _sac()
    obs, actions = torch.randn(4, 3), torch.rand(4, 2) * 1.6 - 0.8
    torch.manual_seed(3)
    loss, log_prob, _ = agent.bc_actor_loss({"observations": obs, "actions": actions})
    expected = (0.5 * log_prob - model.actor.log_prob(obs, actions)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


class _FixedQ(torch.nn.Module):
    """A target critic whose Q-values are given: [members, batch, sampled actions]."""

    def __init__(self, q: torch.Tensor):
        super().__init__()
        self.q = q

    def forward(self, obs, actions, members=None):
        return self.q if members is None else self.q[members]


def test_max_target_backup_takes_min_over_critics_then_max_over_actions():
    # Two critics disagree on two sampled next actions: critic 0 likes action 0, critic 1 action 1.
    # min-then-max = max(min(5, 0), min(0, 5)) = 0; the max-then-min order would give 5.
    agent, model = _sac(ensemble=2, subsample=2)
    agent.cfg = AgentConfig(discount=0.5, max_target_backup=True, cql_n_actions=2)
    model.target_critic = _FixedQ(torch.tensor([[[5.0, 0.0]], [[0.0, 5.0]]]))
    batch = {"rewards": torch.tensor([1.0]), "masks": torch.tensor([1.0]), "next_observations": torch.zeros(1, 3)}
    assert agent.critic_target(batch).item() == pytest.approx(1.0 + 0.5 * 0.0)
    model.target_critic = _FixedQ(torch.tensor([[[5.0, 1.0]], [[4.0, 3.0]]]))  # mins 4, 1 -> max 4
    assert agent.critic_target(batch).item() == pytest.approx(1.0 + 0.5 * 4.0)


def _exact_sac(utd_batch=4):
    net = NetConfig(critic_hidden=(8,), actor_hidden=(8,), ensemble_size=4, subsample_size=2, release_exact=True)
    model = ActorCritic(3, 2, net, init_temperature=0.5, init_cql_alpha=1.0)
    torch.manual_seed(0)
    batch = {"observations": torch.randn(utd_batch, 6, 3), "actions": torch.rand(utd_batch, 6, 2) * 2 - 1,
             "rewards": torch.randn(utd_batch, 6), "next_observations": torch.randn(utd_batch, 6, 3),
             "masks": torch.ones(utd_batch, 6)}
    agent = SAC(model, AgentConfig(), net)
    return agent, model, batch, ReleaseUpdate(agent)


def test_release_exact_zero_gradient_steps_move_the_actor_by_adam_momentum():
    agent, model, batch, update = _exact_sac()
    update(batch)  # 4 critic-only calls, then one actor/temperature call
    for name in ("actor", "critic", "temperature"):
        states = agent.optimizers[name].state.values()
        assert all(int(st["step"]) == 5 for st in states), name  # every optimizer stepped on every call
    opt = agent.optimizers["actor"]
    lr, (b1, b2), eps = opt.defaults["lr"], opt.defaults["betas"], opt.defaults["eps"]
    before = {p: (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone(),
                  int(opt.state[p]["step"])) for p in model.actor.parameters()}
    update.step({k: v[0] for k, v in batch.items()}, frozenset({"critic"}))  # actor: zero gradient
    for p, (p0, m, v, t) in before.items():
        m, v, t = b1 * m, b2 * v, t + 1
        expected = p0 - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-8)
        assert not torch.equal(p.detach(), p0)  # momentum alone moved it


def test_release_exact_actor_follows_the_critic_before_its_update():
    # One UTD-1 call: the actor's first Adam step is -lr * sign(grad), with the gradient taken at the
    # parameters *before* the critic step of the same call.
    agent, model, batch, update = _exact_sac(utd_batch=1)
    mb = {k: v[0] for k, v in batch.items()}
    before = [p.detach().clone() for p in model.actor.parameters()]
    torch.manual_seed(5)
    agent.critic_losses(mb)  # consume the same draws as the update does before its actor loss
    loss, _, _ = agent.actor_loss(mb)
    grads = torch.autograd.grad(loss, list(model.actor.parameters()), allow_unused=True)
    torch.manual_seed(5)
    update(batch)
    lr = agent.optimizers["actor"].defaults["lr"]
    for p, p0, g in zip(model.actor.parameters(), before, grads):
        if g is not None:
            moved = (p.detach() - p0)[g.abs() > 1e-6]
            torch.testing.assert_close(moved, -lr * g.sign()[g.abs() > 1e-6], rtol=1e-3, atol=1e-9)


def test_release_exact_draws_target_critics_with_replacement():
    agent, _, _, _ = _exact_sac()
    torch.manual_seed(0)
    draws = [tuple(agent.target_members(torch.device("cpu")).tolist()) for _ in range(200)]
    assert any(a == b for a, b in draws)  # the same critic twice: randint, as the release
    default, _ = _sac()
    assert all(a != b for a, b in (default.target_members(torch.device("cpu")).tolist() for _ in range(200)))


def test_release_exact_temperature_loss_samples_the_entropy_at_next_states():
    # The release estimates the entropy for the temperature from cql_n_actions actions sampled at s'
    # (max-target backup on), not from the actor step's actions at s.
    agent, model, batch, update = _exact_sac(utd_batch=1)
    agent.cfg = AgentConfig(max_target_backup=True, cql_n_actions=3)
    mb = {k: v[0] for k, v in batch.items()}
    torch.manual_seed(2)
    loss = update.temperature_loss(mb)
    torch.manual_seed(2)
    _, next_log_prob = model.actor.sample(mb["next_observations"].unsqueeze(1).expand(-1, 3, -1))
    assert next_log_prob.shape == (6, 3)
    expected = torch.nn.functional.softplus(model.log_alpha) * (-next_log_prob - agent.target_entropy).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


class _FixedDraws(Draws):
    """Draws with no randomness at all, recording each role; any draw made around them fails."""

    def __init__(self):
        self.roles: list[str] = []

    def normal(self, role):
        self.roles.append(role)
        return torch.zeros_like

    def uniform(self, role, shape, device):
        self.roles.append(role)
        return torch.full(shape, 0.25, device=device)

    def members(self, role, ensemble_size, k, device):
        self.roles.append(role)
        return torch.arange(k, device=device)

    def penalty_members(self, role, ensemble_size, k, device):
        self.roles.append(role)
        return None


def _no_torch_draws(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an update drew a random number outside its Draws")
    for name in ("rand", "randn", "randint", "randn_like", "rand_like", "randint_like", "randperm", "bernoulli"):
        monkeypatch.setattr(torch, name, refuse)


def _cql_batch(utd: int):
    torch.manual_seed(0)
    return {"observations": torch.randn(utd, 6, 3), "actions": torch.rand(utd, 6, 2) * 2 - 1,
            "rewards": torch.randn(utd, 6), "next_observations": torch.randn(utd, 6, 3), "masks": torch.ones(utd, 6)}


def test_every_draw_of_an_update_goes_through_the_agents_draws_by_role(monkeypatch):
    # The parity script replays the release's arrays through these roles; a draw made elsewhere
    # (a torch.rand in a loss) would silently escape it.
    net = NetConfig(critic_hidden=(8,), actor_hidden=(8,), ensemble_size=4, subsample_size=2)
    draws = _FixedDraws()
    agent = CQL(ActorCritic(3, 2, net, init_temperature=0.5, init_cql_alpha=1.0),
                AgentConfig(cql_n_actions=3, max_target_backup=True), net, draws)
    batch = _cql_batch(utd=2)
    _no_torch_draws(monkeypatch)
    agent.update(batch)
    per_critic_step = ["td_next", "td_members", "cql_uniform", "cql_pi", "cql_next_pi", "cql_members"]
    assert draws.roles == per_critic_step * 2 + ["actor_pi"]


def test_the_release_update_draws_its_own_roles_through_the_draws_it_is_given(monkeypatch):
    net = NetConfig(critic_hidden=(8,), actor_hidden=(8,), ensemble_size=4, subsample_size=2, release_exact=True)
    agent = CQL(ActorCritic(3, 2, net, init_temperature=0.5, init_cql_alpha=1.0),
                AgentConfig(cql_n_actions=3, max_target_backup=True, cql_lagrange=True), net)
    draws = _FixedDraws()
    update = ReleaseUpdate(agent, draws)
    assert agent.draws is draws
    batch = _cql_batch(utd=1)
    _no_torch_draws(monkeypatch)
    update(batch)
    assert draws.roles == ["td_next", "td_members", "cql_uniform", "cql_pi", "cql_next_pi", "cql_members",
                           "actor_pi", "temperature_next",
                           "alpha_uniform", "alpha_pi", "alpha_next_pi", "alpha_members"]


def test_update_for_picks_the_release_update_only_for_a_release_exact_model():
    agent, _ = _sac()
    assert update_for(agent) == agent.update
    exact, _, _, _ = _exact_sac()
    chosen = update_for(exact)
    assert isinstance(chosen, ReleaseUpdate) and isinstance(exact.draws, ReleaseDraws)
