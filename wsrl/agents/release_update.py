"""The authors' release's update (``--release-exact``, docs/release.md), as a strategy that drives
the agents' own losses. Each agent keeps one update path (its ``update``); this module holds every
way the release's differs, and is the only place that reads ``NetConfig.release_exact`` besides
the config, whose properties say what the mode changes in the networks and batches.

- **All losses from the same parameters, every optimizer stepped.** Each call of the release's
  ``update`` computes the losses of the networks it trains from the same parameters, then steps
  every optimizer of the agent (its ``apply_loss_fns``), those it does not train with a zero
  gradient, which Adam still turns into a step by its momentum.
- **UTD.** At UTD > 1 (``update_high_utd``) that is one critic-only call per minibatch (IQL: critic
  and value), then one call for the rest on the whole batch.
- **Temperature.** Its entropy estimate is from actions sampled at s' (``cql_n_actions`` of them
  with the max-target backup), not the actor step's at s.
- **CQL's Lagrange alpha.** Its loss recomputes the penalty with fresh draws.
- **Draws** (``ReleaseDraws``): target critics with replacement (``randint``), and the CQL penalty
  on a subsample of critics of its own.
"""

from __future__ import annotations

import torch

from wsrl.agents.cql import CQL
from wsrl.agents.draws import Draws
from wsrl.agents.iql import IQL
from wsrl.agents.sac import SAC, Batch, Metrics, repeat_actions, temperature_loss


class ReleaseDraws(Draws):
    def members(self, role, ensemble_size, k, device):
        if k == ensemble_size:
            return None
        return torch.randint(0, ensemble_size, (k,), device=device)

    def penalty_members(self, role, ensemble_size, k, device):
        return self.members(role, ensemble_size, k, device)


def update_for(agent: SAC):
    """The update a run calls: the agent's own, or the release's where the model was built with
    ``--release-exact``."""
    return ReleaseUpdate(agent) if agent.net.release_exact else agent.update


class ReleaseUpdate:
    """Called as ``agent.update`` is. It replaces the agent's draws by the release's (``draws``:
    others, e.g. scripts/parity_release.py's replay of the release's own arrays)."""

    def __init__(self, agent: SAC, draws: Draws | None = None):
        self.agent = agent
        agent.draws = draws if draws is not None else ReleaseDraws()
        if isinstance(agent, IQL):
            self.optimizers: tuple[str, ...] = ("critic", "value", "actor")
            self.per_minibatch = frozenset(("critic", "value"))
        else:
            lagrange = isinstance(agent, CQL) and agent.cfg.cql_lagrange
            self.optimizers = ("critic", "actor", "temperature", *(("cql_alpha",) if lagrange else ()))
            self.per_minibatch = frozenset(("critic",))

    def __call__(self, batch: Batch, behavior_cloning: bool = False, train_actor: bool = True) -> Metrics:
        """``train_actor=False``: the actor's optimizer does not step at all, not even with a zero
        gradient (which would still move it by its momentum)."""
        stepped = tuple(n for n in self.optimizers if train_actor or n != "actor")
        everything = frozenset(stepped)
        utd = batch["observations"].shape[0]
        if utd == 1:
            return self.step({k: v[0] for k, v in batch.items()}, everything, behavior_cloning, stepped)
        metrics: Metrics = {}
        for i in range(utd):
            metrics = self.step({k: v[i] for k, v in batch.items()}, self.per_minibatch, stepped=stepped)
        full = {k: v.flatten(0, 1) for k, v in batch.items()}
        return {**metrics, **self.step(full, everything - self.per_minibatch, behavior_cloning, stepped)}

    def step(self, batch: Batch, train: frozenset[str], behavior_cloning: bool = False,
             stepped: tuple[str, ...] | None = None) -> Metrics:
        """One call of the release's update: the losses of ``train``, then a step of every optimizer
        in ``stepped`` (default all)."""
        agent = self.agent
        stepped = self.optimizers if stepped is None else stepped
        losses, metrics = self.losses(batch, train, behavior_cloning)
        for name in stepped:
            # A zero gradient, not None: Adam still steps (momentum). Allocated once, then zeroed in place.
            agent.optimizers[name].zero_grad(set_to_none=False)
            for p in agent.trained[name]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        # Gradients first, steps after: every loss sees the same parameters.
        for name, loss in losses.items():
            loss.backward(inputs=agent.trained[name])
        for name in stepped:
            agent.optimizers[name].step()
        if "critic" in train:
            agent.model.soft_update_target(agent.cfg.tau)
        return metrics

    def losses(self, batch: Batch, train: frozenset[str], behavior_cloning: bool) -> tuple[dict[str, torch.Tensor], Metrics]:
        """The release's losses of the networks in ``train``, all from the current parameters."""
        agent = self.agent
        losses: dict[str, torch.Tensor] = {}
        metrics: Metrics = {}
        if isinstance(agent, IQL):
            for name, loss_fn in (("value", agent.value_loss), ("critic", agent.q_loss), ("actor", agent.weighted_bc_loss)):
                if name in train:
                    losses[name], part = loss_fn(batch)
                    metrics.update(part)
            return losses, metrics
        if "critic" in train:
            critic, metrics = agent.critic_losses(batch)
            losses.update({k: v for k, v in critic.items() if k in train})
        if "actor" in train:
            losses["actor"], _, actor_metrics = (agent.bc_actor_loss if behavior_cloning else agent.actor_loss)(batch)
            metrics.update(actor_metrics)
        if "temperature" in train:
            losses["temperature"] = self.temperature_loss(batch)
            metrics.update({"losses/temperature_loss": losses["temperature"].detach(), "policy/alpha": agent.alpha})
        if "cql_alpha" in train:
            # The release recomputes the gap for the multiplier's loss with fresh draws.
            with torch.no_grad():
                q_data = agent.model.critic(batch["observations"], batch["actions"])
                diff = agent.penalty(batch, q_data, family="alpha")[0].mean()
            losses["cql_alpha"] = -agent.cql_alpha() * (diff - agent.cfg.cql_target_gap)
        return losses, metrics

    def temperature_loss(self, batch: Batch) -> torch.Tensor:
        """The entropy estimate from actions sampled at s' (cql_n_actions of them with the
        max-target backup), not from the actor step's actions at s."""
        agent = self.agent
        with torch.no_grad():
            next_obs = batch["next_observations"]
            if agent.cfg.max_target_backup:
                next_obs = repeat_actions(next_obs, agent.cfg.cql_n_actions)
            _, next_log_prob = agent.model.actor.sample(next_obs, agent.draws.normal("temperature_next"))
        return temperature_loss(agent.model.temperature(), next_log_prob, agent.target_entropy)
