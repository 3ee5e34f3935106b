"""Networks: a stacked-weight MLP ensemble, the critic built on it, the Gaussian actor,
the IQL value net, and the ``ActorCritic`` model every algorithm trains.

Every MLP here is an ensemble with weights stored as ``[E, in, out]`` and evaluated with one
batched matmul per layer; the actor and value net are ensembles of one. This keeps a single
MLP implementation and makes the 10-critic ensemble cost a handful of kernels, not a Python loop.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wsrl.config import NetConfig
from wsrl.precision import DTYPES

LOG_STD_MIN, LOG_STD_MAX = math.log(1e-5), math.log(10.0)
ACTION_CLIP = 1.0 - 1e-5
"""Dataset actions of exactly +-1 have infinite atanh; they are clipped here before log-probs."""
LAYER_NORM_EPS = 1e-6
"""flax's default, which the release uses: with the last hidden layer initialised at scale 1e-2
its activations have a variance near 1e-4, where torch's 1e-5 would change the normalisation."""


class EnsembleLinear(nn.Module):
    def __init__(self, ensemble_size: int, in_features: int, out_features: int, init: str = "orthogonal",
                 scale: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_features))
        for member in self.weight.data:
            # The initialisers work on [out, in]; initialise that view of each member.
            init_weight_(member.T, init, scale)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, in] (shared by all members) or [E, B, in] -> [E, B, out]. ``members`` (indices)
        evaluates only those members, e.g. the 2 target critics of the TD target, not all 10."""
        weight, bias = self.weight, self.bias
        if members is not None and weight.shape[0] > 1:
            weight, bias = weight[members], bias[members]
        # The GEMM runs in the input's dtype (EnsembleMLP.hidden_dtype); the fp32 master weights
        # are cast per call, which autograd undoes for their gradients. A no-op in fp32.
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        if weight.shape[0] == 1 and x.dim() == 3:  # one layer shared by all members (shared head)
            return torch.addmm(bias[0], x.reshape(-1, x.shape[-1]), weight[0]).view(*x.shape[:-1], -1)
        if x.dim() == 2:
            x = x.expand(weight.shape[0], *x.shape)  # a view: bmm reads the shared input E times, no copy
        # baddbmm adds the bias inside the GEMM call instead of in a separate pass over [E, B, out].
        return torch.baddbmm(bias, x, weight)


def init_weight_(weight: torch.Tensor, init: str, scale: float | None = None) -> None:
    """The authors' release's two initialisers, with its meaning of ``scale`` (None: its default).

    orthogonal: gain ``scale`` (default sqrt(2)); var_scaling: flax's
    variance_scaling(scale, "fan_avg", "uniform"), i.e. Glorot-uniform with gain sqrt(scale).
    """
    if init == "orthogonal":
        nn.init.orthogonal_(weight, gain=math.sqrt(2) if scale is None else scale)
    elif init == "var_scaling":
        nn.init.xavier_uniform_(weight, gain=math.sqrt(1.0 if scale is None else scale))
    else:
        raise ValueError(f"unknown init '{init}'")


class EnsembleLayerNorm(nn.Module):
    def __init__(self, ensemble_size: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = (self.weight, self.bias) if members is None else (self.weight[members], self.bias[members])
        # One fused multiply-add for the per-member affine, instead of a mul and an add pass. In
        # bf16 the mean and variance still accumulate in fp32 (torch's kernels do for bf16 input);
        # only the normalised output is rounded, as the next GEMM would round it anyway.
        return torch.addcmul(bias.to(x.dtype), F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS), weight.to(x.dtype))


class EnsembleMLP(nn.Module):
    """E independent MLPs (Dense -> [LayerNorm] -> ReLU [-> Dropout])... -> Dense, stacked.

    Initialised as the authors' release does: every hidden Dense by ``init``, the last hidden
    Dense with ``final_hidden_scale`` instead when given (1e-2 keeps the initial outputs near
    zero), the output Dense orthogonal with gain sqrt(2). ``shared_head`` makes the output layer
    one Dense shared by all members, as the release does for its critic; per-member heads (REDQ,
    RLPD) are the default.

    ``hidden_dtype`` is the precision of the hidden layers (``--precision``, wsrl/precision.py):
    in bf16 the input is rounded once and every hidden GEMM, LayerNorm and ReLU runs on bf16
    activations; the head always runs in fp32 on the last hidden activations, so Q-values,
    means and log-stds, and everything computed from them, are fp32.
    """

    def __init__(self, ensemble_size: int, in_dim: int, hidden: tuple[int, ...], out_dim: int,
                 layer_norm: bool, init: str = "orthogonal", final_hidden_scale: float | None = None,
                 shared_head: bool = False, dropout: float = 0.0):
        super().__init__()
        self.ensemble_size = ensemble_size
        self.hidden_dtype = torch.float32
        layers: list[nn.Module] = []
        self.last_linear = 0  # the index of the last hidden Dense in ``hidden``
        width = in_dim
        for i, h in enumerate(hidden):
            last = i == len(hidden) - 1
            if last:
                self.last_linear = len(layers)
            layers.append(EnsembleLinear(ensemble_size, width, h, init, final_hidden_scale if last else None))
            if layer_norm:
                layers.append(EnsembleLayerNorm(ensemble_size, h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.hidden = nn.Sequential(*layers)
        self.fp32_from = len(layers)
        """The hidden layers from this index on run in fp32 whatever ``hidden_dtype`` (bf16-last-fp32:
        the last Dense); by default none."""
        self.head = EnsembleLinear(1 if shared_head else ensemble_size, width, out_dim, "orthogonal")

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """[B, in] or [E, B, in] -> [E, B, out] (or [len(members), B, out])."""
        x = x.to(self.hidden_dtype)
        for i, layer in enumerate(self.hidden):
            if i == self.fp32_from:
                x = x.float()
            if isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)):
                x = layer(x, members)
            elif isinstance(layer, nn.ReLU):
                # In place: neither baddbmm nor addcmul needs its output for backward, so this
                # saves one [E, B, hidden] allocation per layer.
                x = x.relu_()
            else:
                x = layer(x)
        return self.head(x.float(), members)


class Critic(nn.Module):
    """Q-ensemble: Q_e(s, a) for every member e in one pass, returned as [E, ...batch]."""

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig):
        super().__init__()
        self.ensemble_size = net.ensemble_size
        self.mlp = EnsembleMLP(net.ensemble_size, obs_dim + act_dim, net.critic_hidden, 1, net.layer_norm,
                               net.init, net.critic_final_scale,
                               shared_head=net.critic_head_shared)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """Q of every member, [E, ...batch]; with ``members``, only those, [len(members), ...batch]."""
        x = torch.cat([obs, action], dim=-1)
        batch_shape = x.shape[:-1]
        q = self.mlp(x.reshape(-1, x.shape[-1]), members)
        return q.reshape(q.shape[0], *batch_shape)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, net: NetConfig):
        super().__init__()
        self.mlp = EnsembleMLP(1, obs_dim, net.critic_hidden, 1, net.layer_norm, net.init, net.critic_final_scale)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(obs)[0, :, 0]


class Actor(nn.Module):
    """Gaussian policy N(mean(s), std), tanh-squashed by default: a = tanh(u).

    The std is an output of the network (``actor_std="state"``) or one learned value per action
    dimension (``"uniform"``, the release's AntMaze and IQL policies); it is clipped to [1e-5, 10].
    Without squashing (the release's IQL) log-probabilities are of the raw Gaussian and acting
    clips the action to [-1, 1].
    """

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig):
        super().__init__()
        self.act_dim, self.squash = act_dim, net.actor_tanh
        state_std = net.actor_std == "state"
        self.mlp = EnsembleMLP(1, obs_dim, net.actor_hidden, (2 if state_std else 1) * act_dim, net.layer_norm,
                               net.init, net.actor_final_scale, dropout=net.actor_dropout)
        self.log_std = None if state_std else nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(obs.reshape(-1, obs.shape[-1]))[0].reshape(*obs.shape[:-1], -1)
        if self.log_std is None:
            mean, log_std = out.chunk(2, dim=-1)
        else:
            mean, log_std = out, self.log_std.expand_as(out)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, noise: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-probability (under the squashed distribution);
        ``noise`` draws the standard normal noise from the mean (the agents pass their ``Draws``)."""
        mean, log_std = self(obs)
        eps = noise(mean)
        u = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        if not self.squash:
            return u, log_prob
        return torch.tanh(u), log_prob - _tanh_log_det(u)

    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        action = self(obs)[0] if deterministic else self.sample(obs)[0]
        return torch.tanh(action) if self.squash and deterministic else action.clamp(-1.0, 1.0)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(obs)
        u = torch.atanh(action.clamp(-ACTION_CLIP, ACTION_CLIP)) if self.squash else action
        z = (u - mean) / log_std.exp()
        log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob - _tanh_log_det(u) if self.squash else log_prob


def _tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """sum log(1 - tanh(u)^2), written in a form that is stable for large |u|."""
    return (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)


def set_precision(module: nn.Module, precision: str) -> None:
    """Run the hidden layers of every network in ``module`` in ``precision`` (fp32, bf16, or bf16
    but the last hidden layer; see EnsembleMLP). Parameters stay fp32, so this changes no weight and no checkpoint."""
    for mlp in module.modules():
        if isinstance(mlp, EnsembleMLP):
            mlp.hidden_dtype = DTYPES[precision]
            mlp.fp32_from = mlp.last_linear if precision == "bf16-last-fp32" else len(mlp.hidden)


def multiplier_init(value: float, softplus: bool) -> float:
    """The raw parameter that ``multiplier`` maps to ``value``."""
    return math.log(math.expm1(value)) if softplus else math.log(value)


def multiplier(raw: torch.Tensor, softplus: bool) -> torch.Tensor:
    """A positive multiplier (SAC temperature, CQL alpha) from its raw parameter: exp by default,
    softplus as the release's Lagrange multipliers (``NetConfig.softplus_multipliers``)."""
    return F.softplus(raw) if softplus else raw.exp()


class ActorCritic(nn.Module):
    """Everything every algorithm trains, so one checkpoint moves between CQL, IQL and SAC.

    ``log_alpha`` and ``cql_log_alpha`` are the raw parameters of the temperature and of CQL's
    Lagrange alpha: their logs, or their inverse softplus (``NetConfig.softplus_multipliers``).
    """

    def __init__(self, obs_dim: int, act_dim: int, net: NetConfig, init_temperature: float, init_cql_alpha: float):
        super().__init__()
        if not 1 <= net.subsample_size <= net.ensemble_size:
            raise ValueError("subsample_size must be between 1 and ensemble_size")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.softplus_multipliers = net.softplus_multipliers
        self.actor = Actor(obs_dim, act_dim, net)
        self.critic = Critic(obs_dim, act_dim, net)
        self.target_critic = Critic(obs_dim, act_dim, net)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_critic.requires_grad_(False)
        self.value = ValueNet(obs_dim, net)
        self.log_alpha = nn.Parameter(torch.tensor(multiplier_init(init_temperature, net.softplus_multipliers)))
        self.cql_log_alpha = nn.Parameter(torch.tensor(multiplier_init(init_cql_alpha, net.softplus_multipliers)))

    def temperature(self) -> torch.Tensor:
        return multiplier(self.log_alpha, self.softplus_multipliers)

    def cql_alpha(self) -> torch.Tensor:
        return multiplier(self.cql_log_alpha, self.softplus_multipliers)

    @torch.no_grad()
    def soft_update_target(self, tau: float) -> None:
        target = list(self.target_critic.parameters())
        torch._foreach_lerp_(target, list(self.critic.parameters()), tau)
