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

    def critic_step(self, mb: Batch) -> Metrics:
        m, cfg = self.model, self.cfg
        with torch.no_grad():
            target_q = m.target_critic(mb["observations"], mb["actions"]).min(0).values
        v = m.value(mb["observations"])
        value_loss = expectile_loss(target_q - v, cfg.expectile)
        self._step("value", value_loss)

        with torch.no_grad():
            target = td_target(mb["rewards"], mb["masks"], m.value(mb["next_observations"]), cfg.discount)
        q = m.critic(mb["observations"], mb["actions"])
        critic_loss = (q - target).pow(2).mean()
        self._step("critic", critic_loss)
        m.soft_update_target(cfg.tau)
        return {"losses/value_loss": value_loss.detach(), "losses/critic_loss": critic_loss.detach(),
                "q/q_mean": q.detach().mean(), "q/v_mean": v.detach().mean()}

    def weighted_bc_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        m, cfg = self.model, self.cfg
        with torch.no_grad():
            advantage = m.target_critic(batch["observations"], batch["actions"]).min(0).values - m.value(batch["observations"])
            weights = awr_weights(advantage, cfg.iql_temperature, cfg.iql_max_weight)
        loss = -(weights * m.actor.log_prob(batch["observations"], batch["actions"])).mean()
        return loss, {"losses/actor_loss": loss.detach(), "iql/adv_mean": advantage.mean()}

    def update(self, batch: Batch) -> Metrics:
        metrics: Metrics = {}
        for i in range(batch["observations"].shape[0]):
            metrics = self.critic_step({k: v[i] for k, v in batch.items()})
        loss, actor_metrics = self.weighted_bc_loss({k: v.flatten(0, 1) for k, v in batch.items()})
        self._step("actor", loss)
        return {**metrics, **actor_metrics}
