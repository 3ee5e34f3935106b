"""CQL (Kumar et al. 2020) and Cal-QL (Nakamoto et al. 2023) as critic losses over ensemble SAC."""

from __future__ import annotations

import math

import torch

from wsrl.agents.sac import SAC, Batch, Metrics, repeat_actions


def cql_penalty(q_data: torch.Tensor, q_random: torch.Tensor, q_pi: torch.Tensor, q_next_pi: torch.Tensor,
                log_prob_pi: torch.Tensor, log_prob_next_pi: torch.Tensor, act_dim: int,
                importance_sample: bool, temperature: float) -> torch.Tensor:
    """logsumexp_a Q(s, a) - Q(s, a_data) per member and state, [E, B].

    The logsumexp over all actions is estimated from n uniform actions, n from pi(s) and n from
    pi(s') (all evaluated at s). With importance sampling each sample is divided by its proposal
    density, i.e. log-density subtracted; without it Q(s, a_data) joins the set unweighted and the
    logsumexp becomes a log-mean-exp (log of the 3n + 1 samples subtracted, as the release does),
    so the penalty is zero when every Q-value is equal.
    """
    if importance_sample:
        uniform_log_density = act_dim * math.log(0.5)
        samples = torch.cat([q_random - uniform_log_density, q_next_pi - log_prob_next_pi, q_pi - log_prob_pi], dim=-1)
    else:
        samples = torch.cat([q_random, q_data.unsqueeze(-1), q_next_pi, q_pi], dim=-1)
        samples = samples - math.log(samples.shape[-1]) * temperature
    ood = torch.logsumexp(samples / temperature, dim=-1) * temperature
    return ood - q_data


class CQL(SAC):
    name = "cql"

    def cql_alpha(self) -> torch.Tensor:
        if self.cfg.cql_lagrange:
            return self.model.cql_alpha().clamp(0.0, 1e6)
        return torch.full((), self.cfg.cql_alpha, device=self.model.cql_log_alpha.device)

    def bound_policy_q(self, q_sampled: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, Metrics]:
        """Hook for Cal-QL; plain CQL leaves the sampled actions' Q-values as they are."""
        return q_sampled, {}

    def penalty(self, mb: Batch, q_data: torch.Tensor, family: str = "cql") -> tuple[torch.Tensor, Metrics]:
        """The conservative penalty of the members the draws choose (all by default; the release
        draws a subsample apart from the TD target's) and its metrics. ``family`` prefixes the roles
        of its draws (the release's Lagrange loss draws its own, as ``alpha``)."""
        m, cfg, n = self.model, self.cfg, self.cfg.cql_n_actions
        obs = mb["observations"]
        with torch.no_grad():
            obs_n, next_obs_n = repeat_actions(obs, n), repeat_actions(mb["next_observations"], n)
            random_actions = self.draws.uniform(f"{family}_uniform", (*obs_n.shape[:2], m.act_dim), obs.device) * 2 - 1
            pi_actions, log_prob_pi = m.actor.sample(obs_n, self.draws.normal(f"{family}_pi"))
            next_pi_actions, log_prob_next_pi = m.actor.sample(next_obs_n, self.draws.normal(f"{family}_next_pi"))
        # One critic call for all 3n sampled actions per state, all evaluated at s: [E, B, 3n].
        q_sampled = m.critic(torch.cat([obs_n] * 3, 1), torch.cat([random_actions, pi_actions, next_pi_actions], 1))
        members = self.draws.penalty_members(f"{family}_members", self.net.ensemble_size, self.net.subsample_size,
                                             obs.device)
        if members is not None:
            q_sampled, q_data = q_sampled[members], q_data[members]
        q_sampled, bound_metrics = self.bound_policy_q(q_sampled, mb)
        q_random, q_pi, q_next_pi = q_sampled.split(n, dim=-1)
        diff = cql_penalty(q_data, q_random, q_pi, q_next_pi, log_prob_pi, log_prob_next_pi, m.act_dim,
                           cfg.cql_importance_sample, cfg.cql_temperature)
        return diff, {"q/q_pi_mean": q_pi.detach().mean(), **bound_metrics}

    def critic_losses(self, mb: Batch, q: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], Metrics]:
        """SAC's TD loss plus alpha times the penalty (minus Cal-QL's target gap under a Lagrange alpha)."""
        cfg = self.cfg
        q = self.model.critic(mb["observations"], mb["actions"]) if q is None else q  # [E, B], shared with SAC's loss
        losses, metrics = super().critic_losses(mb, q)
        td_loss = losses["critic"]
        cql_diff, penalty_metrics = self.penalty(mb, q)
        cql_diff = cql_diff.mean()
        alpha = self.cql_alpha()
        gap = cfg.cql_target_gap if cfg.cql_lagrange else 0.0
        loss = td_loss + alpha.detach() * (cql_diff - gap)
        losses = {"critic": loss}
        if cfg.cql_lagrange:
            # Dual ascent: alpha grows while the gap exceeds its target (this minibatch's gap).
            losses["cql_alpha"] = -alpha * (cql_diff.detach() - gap)
        return losses, {**metrics, "losses/critic_loss": loss.detach(), "losses/td_loss": td_loss.detach(),
                        "losses/cql_diff": cql_diff.detach(), "cql/alpha": alpha.detach(), **penalty_metrics}


class CalQL(CQL):
    """CQL whose policy-action Q-values are lower-bounded by the Monte-Carlo return-to-go of the
    data (uniform actions are not bounded), so the learned Q stays calibrated for fine-tuning."""

    name = "calql"

    def bound_policy_q(self, q_sampled, mb):
        n = self.cfg.cql_n_actions
        bound = mb["mc_returns"].unsqueeze(-1)  # [B, 1] against [E, B, 2n]
        q_policy = q_sampled[..., n:]
        # The rate counts all 3n sampled actions (the uniform ones are never bounded), as the release.
        rate = (q_policy < bound).float().sum() / q_sampled.numel()
        bounded = torch.cat([q_sampled[..., :n], torch.maximum(q_policy, bound)], dim=-1)
        return bounded, {"calql/bound_rate": rate.detach()}
