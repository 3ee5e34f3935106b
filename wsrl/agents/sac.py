"""Ensemble SAC, the WSRL online learner, and the base every other algorithm extends.

One ``update(batch)`` per env step (or per offline step): the batch has a leading UTD axis,
``[utd, minibatch, ...]``; each minibatch drives one critic step followed by its soft target
update, then one actor step and one temperature step use the whole batch (DESIGN.md section 2).
"""

from __future__ import annotations

import torch

from wsrl.config import AgentConfig, NetConfig
from wsrl.nets import ActorCritic

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


def td_target(rewards: torch.Tensor, masks: torch.Tensor, next_q: torch.Tensor, discount: float) -> torch.Tensor:
    """r + gamma * mask * Q(s', a'); mask = 1 - terminated, so a time-limit cut still bootstraps."""
    return rewards + discount * masks * next_q


def subsample_members(ensemble_size: int, k: int, device: torch.device) -> torch.Tensor | None:
    """k distinct members drawn uniformly (None = all). argsort of uniforms rather than randperm:
    it stays on the device and is safe inside a CUDA graph."""
    if k == ensemble_size:
        return None
    return torch.rand(ensemble_size, device=device).argsort()[:k]


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Raises alpha while the policy entropy -log pi is below the target, lowers it above."""
    return log_alpha.exp() * (-log_prob.detach() - target_entropy).mean()


class SAC:
    name = "sac"

    def __init__(self, model: ActorCritic, cfg: AgentConfig, net: NetConfig):
        self.model, self.cfg, self.net = model, cfg, net
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -float(model.act_dim)
        # fused=True: one kernel per parameter tensor for the whole Adam update instead of a
        # dozen elementwise passes; numerically the same algorithm (tests/test_fast.py).
        fused = next(model.parameters()).device.type in ("cpu", "cuda")
        adam = lambda params, lr: torch.optim.Adam(params, lr=lr, fused=fused)  # noqa: E731
        self.optimizers = {
            "actor": adam(model.actor.parameters(), cfg.actor_lr),
            "critic": adam(model.critic.parameters(), cfg.critic_lr),
            "temperature": adam([model.log_alpha], cfg.temperature_lr),
            "value": adam(model.value.parameters(), cfg.value_lr),
            "cql_alpha": adam([model.cql_log_alpha], cfg.cql_alpha_lr),
        }
        # Fixed per optimizer, so the hot loop does not rebuild the lists every step.
        self._trained = {name: [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
                         for name, opt in self.optimizers.items()}

    def _step(self, name: str, loss: torch.Tensor) -> None:
        """One optimizer step; ``inputs=`` keeps autograd from computing gradients of any other
        network (e.g. the critic's weights during the actor step)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=self._trained[name])
        opt.step()

    @property
    def alpha(self) -> torch.Tensor:
        return self.model.log_alpha.exp().detach()

    def critic_target(self, mb: Batch) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        with torch.no_grad():
            next_actions, next_log_prob = m.actor.sample(mb["next_observations"])
            # Only the k chosen target critics are evaluated: the other members' Q-values would be
            # discarded by the min anyway.
            members = subsample_members(self.net.ensemble_size, self.net.subsample_size, next_actions.device)
            next_q = m.target_critic(mb["next_observations"], next_actions, members).min(0).values
            if cfg.backup_entropy:
                next_q = next_q - self.alpha * next_log_prob
            return td_target(mb["rewards"], mb["masks"], next_q, cfg.discount)

    def critic_loss(self, mb: Batch) -> tuple[torch.Tensor, Metrics]:
        q = self.model.critic(mb["observations"], mb["actions"])  # [E, B]
        loss = (q - self.critic_target(mb)).pow(2).mean()
        return loss, {"losses/critic_loss": loss.detach(), "q/q_mean": q.detach().mean()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        m = self.model
        actions, log_prob = m.actor.sample(batch["observations"])
        # The min over *all* critics is the pessimistic estimate the authors' release uses; the
        # 2-member subsample is only for the TD target, where it controls overestimation bias.
        q = m.critic(batch["observations"], actions).min(0).values
        loss = (self.alpha * log_prob - q).mean()
        return loss, log_prob, {"losses/actor_loss": loss.detach(), "policy/entropy": -log_prob.detach().mean()}

    def bc_actor_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        """Behaviour cloning with SAC's entropy bonus: maximise log pi(a_data|s), keep the entropy up."""
        m = self.model
        _, log_prob = m.actor.sample(batch["observations"])
        data_log_prob = m.actor.log_prob(batch["observations"], batch["actions"])
        loss = (self.alpha * log_prob - data_log_prob).mean()
        return loss, log_prob, {"losses/actor_loss": loss.detach(), "policy/entropy": -log_prob.detach().mean()}

    def critic_step(self, mb: Batch) -> Metrics:
        loss, metrics = self.critic_loss(mb)
        self._step("critic", loss)
        self.model.soft_update_target(self.cfg.tau)
        return metrics

    def update(self, batch: Batch, behavior_cloning: bool = False) -> Metrics:
        """``behavior_cloning``: the actor step clones the batch's actions instead of following Q
        (CQL's warm start, ``--bc-steps``); a separate compiled/captured update, not a branch inside."""
        metrics: Metrics = {}
        for i in range(batch["observations"].shape[0]):
            metrics = self.critic_step({k: v[i] for k, v in batch.items()})
        full = {k: v.flatten(0, 1) for k, v in batch.items()}
        actor_loss, log_prob, actor_metrics = (self.bc_actor_loss if behavior_cloning else self.actor_loss)(full)
        self._step("actor", actor_loss)
        t_loss = temperature_loss(self.model.log_alpha, log_prob, self.target_entropy)
        self._step("temperature", t_loss)
        return {**metrics, **actor_metrics, "losses/temperature_loss": t_loss.detach(), "policy/alpha": self.alpha}
