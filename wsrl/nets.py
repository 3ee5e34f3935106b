"""Networks: a stacked-weight MLP ensemble, the critic built on it, the tanh-Gaussian actor,
the IQL value net, and the ``ActorCritic`` model every algorithm trains.

Every MLP here is an ensemble with weights stored as ``[E, in, out]`` and evaluated with one
batched matmul per layer; the actor and value net are ensembles of one. This keeps a single
MLP implementation and makes the 10-critic ensemble cost a handful of kernels, not a Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wsrl.config import NetConfig

LOG_STD_MIN, LOG_STD_MAX = math.log(1e-5), math.log(10.0)
ACTION_CLIP = 1.0 - 1e-5
"""Dataset actions of exactly +-1 have infinite atanh; they are clipped here before log-probs."""


class EnsembleLinear(nn.Module):
    def __init__(self, ensemble_size: int, in_features: int, out_features: int, gain: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_features))
        for member in self.weight.data:
            # orthogonal_ works on [out, in]; initialise that view of each member.
            nn.init.orthogonal_(member.T, gain=gain)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in] (shared by all members) or [E, B, in] -> [E, B, out]. ``members`` (indices)
        evaluates only those members, e.g. the 2 target critics of the TD target, not all 10."""
        weight, bias = self.weight, self.bias
        if members is not None and weight.shape[0] > 1:
            weight, bias = weight[members], bias[members]
        if weight.shape[0] == 1 and x.dim() == 3:  # one layer shared by all members (shared head)
            return torch.addmm(bias[0], x.reshape(-1, x.shape[-1]), weight[0]).view(*x.shape[:-1], -1)
        if x.dim() == 2:
            x = x.expand(weight.shape[0], *x.shape)  # a view: bmm reads the shared input E times, no copy
        # baddbmm adds the bias inside the GEMM call instead of in a separate pass over [E, B, out].
        return torch.baddbmm(bias, x, weight)


class EnsembleLayerNorm(nn.Module):
    def __init__(self, ensemble_size: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        # One fused multiply-add for the per-member affine, instead of a mul and an add pass.
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:]), weight)


class EnsembleMLP(nn.Module):
    """E independent MLPs (Dense -> [LayerNorm] -> ReLU [-> Dropout])... -> Dense, stacked.

    ``shared_head`` makes the output layer one Dense shared by all members, as the authors'
    JAX release does for its critic; per-member heads (REDQ, RLPD) are the default.
    """

    def __init__(self, ensemble_size: int, in_dim: int, hidden: tuple[int, ...], out_dim: int,
                 layer_norm: bool, out_gain: float = 1.0, shared_head: bool = False, dropout: float = 0.0):
        super().__init__()
        self.ensemble_size = ensemble_size
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(EnsembleLinear(ensemble_size, width, h, gain=math.sqrt(2)))
            if layer_norm:
                layers.append(EnsembleLayerNorm(ensemble_size, h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.hidden = nn.Sequential(*layers)
        self.head = EnsembleLinear(1 if shared_head else ensemble_size, width, out_dim, gain=out_gain)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """[B, in] or [E, B, in] -> [E, B, out] (or [len(members), B, out])."""
        for layer in self.hidden:
            if isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)):
                x = layer(x, members)
            elif isinstance(layer, nn.ReLU):
                # In place: neither baddbmm nor addcmul needs its output for backward, so this
                # saves one [E, B, hidden] allocation per layer.
                x = x.relu_()
            else:
                x = layer(x)
        return self.head(x, members)


class Critic(nn.Module):
    """Q-ensemble: Q_e(s, a) for every member e in one pass, returned as [E, ...batch]."""

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig):
        super().__init__()
        self.ensemble_size = net.ensemble_size
        self.mlp = EnsembleMLP(net.ensemble_size, obs_dim + act_dim, net.critic_hidden, 1,
                               net.layer_norm, shared_head=net.shared_critic_head)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """Q of every member, [E, ...batch]; with ``members``, only those, [len(members), ...batch]."""
        x = torch.cat([obs, action], dim=-1)
        batch_shape = x.shape[:-1]
        q = self.mlp(x.reshape(-1, x.shape[-1]), members)
        return q.reshape(q.shape[0], *batch_shape)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, net: NetConfig):
        super().__init__()
        self.mlp = EnsembleMLP(1, obs_dim, net.critic_hidden, 1, net.layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(obs)[0, :, 0]


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mean(s), std(s)); std clipped to [1e-5, 10]."""

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig):
        super().__init__()
        self.act_dim = act_dim
        # A small output layer (gain 1e-2) starts the policy near mean 0, std 1, as in the
        # authors' release; it keeps early tanh outputs away from saturation.
        self.mlp = EnsembleMLP(1, obs_dim, net.actor_hidden, 2 * act_dim, net.layer_norm,
                               out_gain=1e-2, dropout=net.actor_dropout)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(obs.reshape(-1, obs.shape[-1]))[0].reshape(*obs.shape[:-1], 2 * self.act_dim)
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-probability under the squashed distribution."""
        mean, log_std = self(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return torch.tanh(u), log_prob - _tanh_log_det(u)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self(obs)[0])
        return self.sample(obs)[0]

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        u = torch.atanh(action.clamp(-ACTION_CLIP, ACTION_CLIP))
        z = (u - mean) / log_std.exp()
        log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob - _tanh_log_det(u)


def _tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """sum log(1 - tanh(u)^2), written in a form that is stable for large |u|."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


class ActorCritic(nn.Module):
    """Everything every algorithm trains, so one checkpoint moves between CQL, IQL and SAC."""

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig, init_temperature: float, init_cql_alpha: float):
        super().__init__()
        if not 1 <= net.subsample_size <= net.ensemble_size:
            raise ValueError("subsample_size must be between 1 and ensemble_size")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.actor = TanhGaussianActor(obs_dim, act_dim, net)
        self.critic = Critic(obs_dim, act_dim, net)
        self.target_critic = Critic(obs_dim, act_dim, net)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.value = ValueNet(obs_dim, net)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.cql_log_alpha = nn.Parameter(torch.tensor(math.log(init_cql_alpha)))

    @torch.no_grad()
    def soft_update_target(self, tau: float) -> None:
        target = list(self.target_critic.parameters())
        torch._foreach_lerp_(target, list(self.critic.parameters()), tau)
