"""IQL (Kostrikov et al. 2021): expectile value, TD critic on V(s'), advantage-weighted actor."""

from __future__ import annotations

import torch

from wsrl.agents.sac import SAC, Batch, Metrics, td_target


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """|tau - 1(diff < 0)| * diff^2 with diff = Q - V: tau > 0.5 pushes V towards an upper expectile."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def awr_weights(advantage: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    return torch.exp(temperature * advantage).clamp(max=max_weight)


class IQL(SAC):
    name = "iql"

    def target_q(self, mb: Batch) -> torch.Tensor:
        """min over the chosen target critics of Q(s, a_data), no gradient."""
        with torch.no_grad():
            members = self.target_members(mb["observations"].device)
            return self.model.target_critic(mb["observations"], mb["actions"], members).min(0).values

    def value_loss(self, mb: Batch) -> tuple[torch.Tensor, Metrics]:
        v = self.model.value(mb["observations"])
        loss = expectile_loss(self.target_q(mb) - v, self.cfg.expectile)
        return loss, {"losses/value_loss": loss.detach(), "q/v_mean": v.detach().mean()}

    def q_loss(self, mb: Batch) -> tuple[torch.Tensor, Metrics]:
        m = self.model
        with torch.no_grad():
            target = td_target(mb["rewards"], mb["masks"], m.value(mb["next_observations"]), self.cfg.discount)
        q = m.critic(mb["observations"], mb["actions"])
        loss = (q - target).pow(2).mean()
        return loss, {"losses/critic_loss": loss.detach(), "q/q_mean": q.detach().mean()}

    def weighted_bc_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        m, cfg = self.model, self.cfg
        with torch.no_grad():
            advantage = self.target_q(batch) - m.value(batch["observations"])
            weights = awr_weights(advantage, cfg.iql_temperature, cfg.iql_max_weight)
        loss = -(weights * m.actor.log_prob(batch["observations"], batch["actions"])).mean()
        return loss, {"losses/actor_loss": loss.detach(), "iql/adv_mean": advantage.mean()}

    def critic_step(self, mb: Batch) -> Metrics:
        value_loss, metrics = self.value_loss(mb)
        self._step("value", value_loss)
        q_loss, q_metrics = self.q_loss(mb)  # bootstraps from the value just updated
        self._step("critic", q_loss)
        self.model.soft_update_target(self.cfg.tau)
        return {**metrics, **q_metrics}

    def update(self, batch: Batch, behavior_cloning: bool = False, train_actor: bool = True) -> Metrics:
        metrics: Metrics = {}
        for i in range(batch["observations"].shape[0]):
            metrics = self.critic_step({k: v[i] for k, v in batch.items()})
        if not train_actor:
            return metrics
        loss, actor_metrics = self.weighted_bc_loss({k: v.flatten(0, 1) for k, v in batch.items()})
        self._step("actor", loss)
        return {**metrics, **actor_metrics}
