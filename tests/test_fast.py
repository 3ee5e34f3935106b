"""Every fast path against the plain computation it replaces (tiny nets, CPU, no timing)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from wsrl.agents import CQL, SAC
from wsrl.config import AgentConfig, FinetuneConfig, NetConfig
from wsrl.fast import StaticUpdate, configure_cpu, make_update
from wsrl.nets import LAYER_NORM_EPS, ActorCritic, EnsembleLayerNorm, EnsembleLinear, set_precision

OBS, ACT = 5, 3
NET = NetConfig(critic_hidden=(16, 16), actor_hidden=(16, 16), ensemble_size=4, subsample_size=2)
NO_CUDA = "needs a CUDA device (CUDA graphs do not exist on CPU)"


def make_agent(cls=SAC, net: NetConfig = NET, seed: int = 0, precision: str = "fp32"):
    torch.manual_seed(seed)
    model = ActorCritic(OBS, ACT, net, 1.0, 5.0)
    set_precision(model, precision)
    return cls(model, AgentConfig(), net)


def batches(n: int, utd: int = 2, mb: int = 8, seed: int = 1, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {"observations": torch.randn(utd, mb, OBS, generator=g), "actions": torch.rand(utd, mb, ACT, generator=g) * 2 - 1,
             "rewards": torch.randn(utd, mb, generator=g), "next_observations": torch.randn(utd, mb, OBS, generator=g),
             "masks": (torch.rand(utd, mb, generator=g) > 0.1).float(), "mc_returns": torch.randn(utd, mb, generator=g)}
        out.append({k: v.to(device) for k, v in b.items()})
    return out


def plain_member_q(critic, obs, act, e: int) -> torch.Tensor:
    """Member e of the stacked critic, computed layer by layer with F.linear / F.layer_norm."""
    x = torch.cat([obs, act], -1)
    for layer in critic.mlp.hidden:
        if isinstance(layer, EnsembleLinear):
            x = F.linear(x, layer.weight[e].T, layer.bias[e, 0])
        elif isinstance(layer, EnsembleLayerNorm):
            x = F.layer_norm(x, x.shape[-1:], layer.weight[e, 0], layer.bias[e, 0], eps=LAYER_NORM_EPS)
        else:
            x = torch.relu(x)
    head = critic.mlp.head
    h = e if head.weight.shape[0] > 1 else 0
    return F.linear(x, head.weight[h].T, head.bias[h, 0])[..., 0]


@pytest.mark.parametrize("shared_head", [False, True])
def test_stacked_critic_matches_per_member_loop(shared_head):
    net = NetConfig(critic_hidden=(16, 16), ensemble_size=4, shared_critic_head=shared_head)
    torch.manual_seed(0)
    model = ActorCritic(OBS, ACT, net, 1.0, 1.0)
    obs, act = torch.randn(7, 3, OBS), torch.rand(7, 3, ACT)
    q = model.critic(obs, act)
    assert q.shape == (4, 7, 3)
    for e in range(4):
        torch.testing.assert_close(q[e], plain_member_q(model.critic, obs, act, e))
    members = torch.tensor([2, 0])
    torch.testing.assert_close(model.critic(obs, act, members), q[members])


def test_stacked_critic_gradients_match_per_member_loop():
    torch.manual_seed(0)
    model = ActorCritic(OBS, ACT, NET, 1.0, 1.0)
    obs, act = torch.randn(6, OBS), torch.rand(6, ACT, requires_grad=True)
    fast = torch.autograd.grad(model.critic(obs, act).square().sum(), [act, *model.critic.parameters()])
    plain = torch.autograd.grad(sum(plain_member_q(model.critic, obs, act, e).square().sum() for e in range(4)),
                                [act, *model.critic.parameters()])
    for a, b in zip(fast, plain):
        # The last hidden layer's activations are ~1e-2 (its init scale), so its LayerNorm
        # gradients are ~100x the inputs': float32 rounding reaches ~1e-5 there.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_adam_matches_default_adam():
    agent = make_agent()
    assert all(g["fused"] for opt in agent.optimizers.values() for g in opt.param_groups)
    plain = make_agent()
    plain.optimizers = {name: torch.optim.Adam([p for g in opt.param_groups for p in g["params"]], lr=opt.param_groups[0]["lr"])
                        for name, opt in plain.optimizers.items()}
    for b in batches(3):
        torch.manual_seed(5)
        agent.update(b)
        torch.manual_seed(5)
        plain.update(b)
    for p, q in zip(agent.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [SAC, CQL])
def test_target_uses_only_the_subsampled_critics(cls, monkeypatch):
    """The TD target from the k evaluated members equals the one from all members, then indexed."""
    agent = make_agent(cls)
    mb = {k: v[0] for k, v in batches(1)[0].items()}
    torch.manual_seed(3)
    fast = agent.critic_target(mb)
    target_critic = agent.model.target_critic
    forward = type(target_critic).forward

    def all_members_then_index(self, obs, action, members=None):
        q = forward(self, obs, action)
        return q if members is None else q[members]

    monkeypatch.setattr(type(target_critic), "forward", all_members_then_index)
    torch.manual_seed(3)
    torch.testing.assert_close(agent.critic_target(mb), fast)


def test_actor_step_leaves_critic_gradients_alone():
    agent = make_agent()
    mb = {k: v.flatten(0, 1) for k, v in batches(1)[0].items()}
    loss, _, _ = agent.actor_loss(mb)
    agent._step("actor", loss)
    assert all(p.grad is None for p in agent.model.critic.parameters())
    assert all(p.grad is not None for p in agent.model.actor.parameters())


@pytest.mark.parametrize("cls", [SAC, CQL])
def test_static_update_matches_plain_update(cls):
    """The static-input wrapper CUDA graphs replay gives the plain update's results (run eagerly)."""
    fast, plain = make_agent(cls), make_agent(cls)
    static = StaticUpdate(fast.update, capture=False)
    for b in batches(3):
        torch.manual_seed(7)
        m_fast = {k: v.clone() for k, v in static(b).items()}
        torch.manual_seed(7)
        m_plain = plain.update(b)
        assert m_fast.keys() == m_plain.keys()
        for k in m_fast:
            torch.testing.assert_close(m_fast[k], m_plain[k], rtol=0, atol=0)
    for p, q in zip(fast.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shapes"):
        static(batches(1, mb=4)[0])


def test_make_update_on_cpu():
    agent = make_agent()
    threads = torch.get_num_threads()
    try:
        update = make_update(agent, FinetuneConfig(threads=1, cuda_graph=True), torch.device("cpu"))
        assert torch.get_num_threads() == 1
        assert update == agent.update  # no CUDA graph on CPU, no compile unless asked
        assert configure_cpu(0) >= 1
    finally:
        torch.set_num_threads(threads)


# Compiled bf16 code fuses the elementwise ops around each GEMM and keeps their intermediates in
# fp32 where eager rounds each to bf16, so it matches eager to bf16's precision, not bit for bit.
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("bf16", 2e-2)])
def test_compiled_update_matches_eager(precision, tol):
    """torch.compile of the whole update (the --compile path); tiny nets keep compiling short."""
    import torch._inductor.config

    net = NetConfig(critic_hidden=(8,), actor_hidden=(8,), ensemble_size=3, subsample_size=2)
    fast, plain = make_agent(net=net, precision=precision), make_agent(net=net, precision=precision)
    update = make_update(fast, FinetuneConfig(compile=True, threads=torch.get_num_threads()), torch.device("cpu"))
    # Compiled code draws its own random numbers unless told to call the eager generators. The
    # config's own patch(), not monkeypatch: monkeypatch's undo leaves the option hidden, and
    # torch.export (tests/test_policies.py) reads it later in the same process.
    with torch._inductor.config.patch(fallback_random=True):
        for b in batches(2):
            torch.manual_seed(11)
            m_fast = update(b)
            torch.manual_seed(11)
            m_plain = plain.update(b)
            torch.testing.assert_close(m_fast["losses/critic_loss"], m_plain["losses/critic_loss"], rtol=tol, atol=tol / 10)
    for p, q in zip(fast.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol / 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("cls", [SAC, CQL])
def test_cuda_graph_update_matches_eager(cls, precision):
    fast, plain = make_agent(cls, precision=precision), make_agent(cls, precision=precision)
    fast.model.cuda(), plain.model.cuda()
    for agent in (fast, plain):  # optimizers were built on CPU tensors; rebuild them on the GPU
        agent.__init__(agent.model, agent.cfg, agent.net)
    update = make_update(fast, FinetuneConfig(cuda_graph=True), torch.device("cuda"))
    assert isinstance(update, StaticUpdate)
    for b in batches(6, device="cuda"):
        update(b)
        plain.update(b)
    assert update.graph is not None, "the update was not captured"
    # Replayed RNG draws need not equal eager ones, so this checks that replays train (finite,
    # changing weights); the arithmetic itself is the static path tested on CPU above.
    for p in fast.model.parameters():
        assert torch.isfinite(p).all()
    snapshot = copy.deepcopy(fast.model.state_dict())
    update(batches(1, device="cuda", seed=9)[0])
    assert any(not torch.equal(v, fast.model.state_dict()[k]) for k, v in snapshot.items())
