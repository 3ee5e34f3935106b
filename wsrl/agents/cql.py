"""CQL (Kumar et al. 2020) and Cal-QL (Nakamoto et al. 2023) as critic losses over ensemble SAC."""

from __future__ import annotations

import math

import torch

from wsrl.agents.sac import SAC, Batch, Metrics, subsample_members, td_target


def cql_penalty(q_data: torch.Tensor, q_random: torch.Tensor, q_pi: torch.Tensor, q_next_pi: torch.Tensor,
                log_prob_pi: torch.Tensor, log_prob_next_pi: torch.Tensor, act_dim: int,
                importance_sample: bool, temperature: float) -> torch.Tensor:
    """logsumexp_a Q(s, a) - Q(s, a_data) per member and state, [E, B].

    The logsumexp over all actions is estimated from n uniform actions, n from pi(s) and n from
    pi(s') (all evaluated at s). With importance sampling each sample is divided by its proposal
    density, i.e. log-density subtracted; without it Q(s, a_data) joins the set unweighted.
    """
    if importance_sample:
        uniform_log_density = act_dim * math.log(0.5)
        samples = [q_random - uniform_log_density, q_next_pi - log_prob_next_pi, q_pi - log_prob_pi]
    else:
        samples = [q_random, q_data.unsqueeze(-1), q_next_pi, q_pi]
    ood = torch.logsumexp(torch.cat(samples, dim=-1) / temperature, dim=-1) * temperature
    return ood - q_data


class CQL(SAC):
    name = "cql"

    def cql_alpha(self) -> torch.Tensor:
        if self.cfg.cql_lagrange:
            return self.model.cql_log_alpha.exp().clamp(0.0, 1e6)
        return torch.full((), self.cfg.cql_alpha, device=self.model.cql_log_alpha.device)

    def bound_policy_q(self, q_pi: torch.Tensor, q_next_pi: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        """Hook for Cal-QL; plain CQL leaves the policy-action Q-values as they are."""
        return q_pi, q_next_pi, {}

    def critic_target(self, mb: Batch) -> torch.Tensor:
        if not self.cfg.cql_max_target_backup:
            return super().critic_target(mb)
        m, cfg, n = self.model, self.cfg, self.cfg.cql_n_actions
        with torch.no_grad():
            next_obs = _repeat(mb["next_observations"], n)
            next_actions, next_log_prob = m.actor.sample(next_obs)  # [B, n, A], [B, n]
            # Only the chosen target critics are evaluated, [k, B, n].
            members = subsample_members(self.net.ensemble_size, self.net.subsample_size, next_actions.device)
            target_q = m.target_critic(next_obs, next_actions, members)
            # Max over the n sampled next actions per member, then min over the chosen members.
            best_q, best = target_q.max(-1)
            next_q = best_q.min(0).values
            if cfg.backup_entropy:
                best_log_prob = next_log_prob.gather(1, best.T).min(1).values
                next_q = next_q - self.alpha * best_log_prob
            return td_target(mb["rewards"], mb["masks"], next_q, cfg.discount)

    def critic_loss(self, mb: Batch) -> tuple[torch.Tensor, Metrics]:
        m, cfg, n = self.model, self.cfg, self.cfg.cql_n_actions
        obs = mb["observations"]
        q = m.critic(obs, mb["actions"])  # [E, B]
        td_loss = (q - self.critic_target(mb)).pow(2).mean()

        with torch.no_grad():
            obs_n, next_obs_n = _repeat(obs, n), _repeat(mb["next_observations"], n)
            random_actions = torch.rand(*obs_n.shape[:2], m.act_dim, device=obs.device) * 2 - 1
            pi_actions, log_prob_pi = m.actor.sample(obs_n)
            next_pi_actions, log_prob_next_pi = m.actor.sample(next_obs_n)
        # One critic call for all 3n sampled actions per state, all evaluated at s.
        q_sampled = m.critic(torch.cat([obs_n] * 3, 1), torch.cat([random_actions, pi_actions, next_pi_actions], 1))
        q_random, q_pi, q_next_pi = q_sampled.split(n, dim=-1)
        q_pi, q_next_pi, bound_metrics = self.bound_policy_q(q_pi, q_next_pi, mb)
        cql_diff = cql_penalty(q, q_random, q_pi, q_next_pi, log_prob_pi, log_prob_next_pi, m.act_dim,
                               cfg.cql_importance_sample, cfg.cql_temperature).mean()

        alpha = self.cql_alpha()
        gap = cfg.cql_target_gap if cfg.cql_lagrange else 0.0
        loss = td_loss + alpha.detach() * (cql_diff - gap)
        if cfg.cql_lagrange:
            # Dual ascent: alpha grows while the gap exceeds its target. Stepped here because it
            # needs this minibatch's gap; it touches only cql_log_alpha.
            self._step("cql_alpha", -alpha * (cql_diff.detach() - gap))
        return loss, {"losses/critic_loss": loss.detach(), "losses/td_loss": td_loss.detach(),
                      "losses/cql_diff": cql_diff.detach(), "cql/alpha": alpha.detach(),
                      "q/q_mean": q.detach().mean(), "q/q_pi_mean": q_pi.detach().mean(), **bound_metrics}


class CalQL(CQL):
    """CQL whose policy-action Q-values are lower-bounded by the Monte-Carlo return-to-go of the
    data (uniform actions are not bounded), so the learned Q stays calibrated for fine-tuning."""

    name = "calql"

    def bound_policy_q(self, q_pi, q_next_pi, mb):
        bound = mb["mc_returns"].unsqueeze(-1)  # [B, 1] against [E, B, n]
        rate = (q_pi < bound).float().mean()
        return torch.maximum(q_pi, bound), torch.maximum(q_next_pi, bound), {"calql/bound_rate": rate.detach()}


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, d] -> [B, n, d] (a view)."""
    return x.unsqueeze(1).expand(-1, n, -1)
