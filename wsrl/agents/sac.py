"""Ensemble SAC, the WSRL online learner, and the base every other algorithm extends.

One ``update(batch)`` per env step (or per offline step): the batch has a leading UTD axis,
``[utd, minibatch, ...]``; each minibatch drives one critic step followed by its soft target
update, then one actor step and one temperature step use the whole batch (docs/design.md, "The online update").
"""

from __future__ import annotations

import torch

from wsrl.checkpoint import load_optimizer_state, optimizer_state
from wsrl.config import AgentConfig, NetConfig
from wsrl.errors import UserError
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


def temperature_loss(alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Raises alpha while the policy entropy -log pi is below the target, lowers it above."""
    return alpha * (-log_prob.detach() - target_entropy).mean()


def repeat_actions(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, d] -> [B, n, d] (a view): n sampled actions per state."""
    return x.unsqueeze(1).expand(-1, n, -1)


class SAC:
    name = "sac"
    release_optimizers = ("critic", "actor", "temperature")
    """The optimizers the authors' release has for this algorithm (``release_exact`` steps all of them)."""
    release_critic_optimizers = ("critic",)
    """Those trained on each UTD minibatch; the others train once on the whole batch."""

    def __init__(self, model: ActorCritic, cfg: AgentConfig, net: NetConfig):
        self.model, self.cfg, self.net = model, cfg, net
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -float(model.act_dim)
        # fused=True: one kernel per parameter tensor for the whole Adam update instead of a
        # dozen elementwise passes; numerically the same algorithm (tests/test_fast.py).
        device = next(model.parameters()).device
        fused = device.type in ("cpu", "cuda")
        # The lr is a tensor on the device that wsrl/schedule.py overwrites in place, so a compiled
        # or CUDA-graph-captured update follows a schedule without recompiling. Its dtype is what
        # each fused kernel reads: CUDA's loads a float32 from device memory; CPU's takes the
        # value as a double, so float64 keeps a constant lr bit for bit the float it replaced.
        lr_dtype = torch.float32 if device.type == "cuda" else torch.float64
        adam = lambda params, lr: torch.optim.Adam(  # noqa: E731
            params, lr=torch.tensor(lr, dtype=lr_dtype, device=device), fused=fused)
        self.base_lrs = {"actor": cfg.actor_lr, "critic": cfg.critic_lr, "temperature": cfg.temperature_lr,
                         "value": cfg.value_lr, "cql_alpha": cfg.cql_alpha_lr}
        params = {"actor": model.actor.parameters(), "critic": model.critic.parameters(),
                  "temperature": [model.log_alpha], "value": model.value.parameters(),
                  "cql_alpha": [model.cql_log_alpha]}
        self.optimizers = {name: adam(params[name], self.base_lrs[name]) for name in self.base_lrs}
        # Fixed per optimizer, so the hot loop does not rebuild the lists every step.
        self._trained = {name: [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
                         for name, opt in self.optimizers.items()}

    def state_dict(self) -> dict:
        """The optimizers' states, for a checkpoint (the weights are the model's own ``state_dict``)."""
        return {"optimizers": {name: optimizer_state(opt) for name, opt in self.optimizers.items()}}

    def load_state_dict(self, model_state: dict, state: dict, where: str, resume: bool = False) -> None:
        """Weights and all optimizer states; shape mismatches become one clear error naming ``where``.
        The learning rates stay this run's lr tensors (a compiled or captured update reads those): a
        run started from another's checkpoint keeps its own values, a resumed run (``resume``)
        takes the saved ones, where its schedule stood."""
        own = self.model.state_dict()
        for key, value in model_state.items():
            if key not in own:
                raise UserError(f"{where}: unexpected weight '{key}' (not a wsrl model of this version)")
            if own[key].shape != value.shape:
                raise UserError(f"{where}: weight '{key}' has shape {tuple(value.shape)}, this config needs "
                                f"{tuple(own[key].shape)}")
        missing = sorted(set(own) - set(model_state))
        if missing:
            raise UserError(f"{where}: missing weight(s) {', '.join(missing[:3])}")
        self.model.load_state_dict(model_state)
        for name, opt in self.optimizers.items():
            lrs = [g["lr"] for g in opt.param_groups]
            load_optimizer_state(opt, state["optimizers"][name])
            for group, lr in zip(opt.param_groups, lrs):
                if resume:
                    lr.copy_(torch.as_tensor(group["lr"]))
                group["lr"] = lr

    def _step(self, name: str, loss: torch.Tensor) -> None:
        """One optimizer step; ``inputs=`` keeps autograd from computing gradients of any other
        network (e.g. the critic's weights during the actor step)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=self._trained[name])
        opt.step()

    @property
    def alpha(self) -> torch.Tensor:
        return self.model.temperature().detach()

    def target_members(self, device: torch.device) -> torch.Tensor | None:
        """The target critics of one TD target: distinct members, or drawn with replacement as the
        release's ``randint`` does (``release_exact``)."""
        k, size = self.net.subsample_size, self.net.ensemble_size
        if self.net.release_exact and k < size:
            return torch.randint(0, size, (k,), device=device)
        return subsample_members(size, k, device)

    def critic_target(self, mb: Batch) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        with torch.no_grad():
            next_obs = mb["next_observations"]
            if cfg.max_target_backup:
                next_obs = repeat_actions(next_obs, cfg.cql_n_actions)  # [B, n, d]
            next_actions, next_log_prob = m.actor.sample(next_obs)
            # Only the k chosen target critics are evaluated: the other members' Q-values would be
            # discarded by the min anyway.
            members = self.target_members(next_actions.device)
            next_q = m.target_critic(next_obs, next_actions, members).min(0).values
            if cfg.backup_entropy:
                next_q = next_q - self.alpha * next_log_prob
            if cfg.max_target_backup:
                # Min over critics per sampled action first, then the best action (the original
                # CQL code and the release): the max of per-critic maxima would be optimistic.
                next_q = next_q.max(-1).values
            return td_target(mb["rewards"], mb["masks"], next_q, cfg.discount)

    def critic_losses(self, mb: Batch) -> tuple[dict[str, torch.Tensor], Metrics]:
        """The losses of one critic step by optimizer name ("critic", and e.g. CQL's "cql_alpha")."""
        q = self.model.critic(mb["observations"], mb["actions"])  # [E, B]
        loss = (q - self.critic_target(mb)).pow(2).mean()
        return {"critic": loss}, {"losses/critic_loss": loss.detach(), "q/q_mean": q.detach().mean()}

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
        losses, metrics = self.critic_losses(mb)
        for name, loss in losses.items():
            self._step(name, loss)
        self.model.soft_update_target(self.cfg.tau)
        return metrics

    def update(self, batch: Batch, behavior_cloning: bool = False, train_actor: bool = True) -> Metrics:
        """``behavior_cloning``: the actor step clones the batch's actions instead of following Q
        (CQL's warm start, ``--bc-steps``); ``train_actor=False``: no actor step, the critic and
        temperature train as usual (``--actor-update-delay``). Each is a separate compiled/captured
        update, not a branch inside."""
        if self.net.release_exact:
            return self.release_update(batch, behavior_cloning, train_actor)
        metrics: Metrics = {}
        for i in range(batch["observations"].shape[0]):
            metrics = self.critic_step({k: v[i] for k, v in batch.items()})
        full = {k: v.flatten(0, 1) for k, v in batch.items()}
        if train_actor:
            actor_loss, log_prob, actor_metrics = (self.bc_actor_loss if behavior_cloning else self.actor_loss)(full)
            self._step("actor", actor_loss)
        else:
            with torch.no_grad():  # the temperature still tracks the (frozen) policy's entropy
                log_prob = self.model.actor.sample(full["observations"])[1]
            actor_metrics = {"policy/entropy": -log_prob.mean()}
        t_loss = temperature_loss(self.model.temperature(), log_prob, self.target_entropy)
        self._step("temperature", t_loss)
        return {**metrics, **actor_metrics, "losses/temperature_loss": t_loss.detach(), "policy/alpha": self.alpha}

    # The authors' release (``release_exact``): each call of its ``update`` computes the losses of
    # the networks it trains from the same parameters, then steps *every* optimizer of the agent
    # (``common.py`` ``apply_loss_fns``), those it does not train with a zero gradient; at UTD > 1
    # (``update_high_utd``) that is utd critic-only calls, then one actor/temperature call.

    def release_losses(self, batch: Batch, train: frozenset[str], behavior_cloning: bool) -> tuple[dict[str, torch.Tensor], Metrics]:
        """The release's losses of the networks in ``train``, all from the current parameters."""
        losses: dict[str, torch.Tensor] = {}
        metrics: Metrics = {}
        if "critic" in train:
            critic, metrics = self.critic_losses(batch)
            losses.update({k: v for k, v in critic.items() if k in train})
        if "actor" in train:
            losses["actor"], _, actor_metrics = (self.bc_actor_loss if behavior_cloning else self.actor_loss)(batch)
            metrics.update(actor_metrics)
        if "temperature" in train:
            losses["temperature"] = self.release_temperature_loss(batch)
            metrics.update({"losses/temperature_loss": losses["temperature"].detach(), "policy/alpha": self.alpha})
        return losses, metrics

    def release_temperature_loss(self, batch: Batch) -> torch.Tensor:
        """The release estimates the entropy from actions sampled at s' (cql_n_actions of them with
        the max-target backup), not from the actor step's actions at s."""
        with torch.no_grad():
            next_obs = batch["next_observations"]
            if self.cfg.max_target_backup:
                next_obs = repeat_actions(next_obs, self.cfg.cql_n_actions)
            _, next_log_prob = self.model.actor.sample(next_obs)
        return temperature_loss(self.model.temperature(), next_log_prob, self.target_entropy)

    def release_step(self, batch: Batch, train: frozenset[str], behavior_cloning: bool = False,
                     stepped: tuple[str, ...] | None = None) -> Metrics:
        """``stepped``: the optimizers that step (default all of the release's; a frozen actor's
        does not, not even with a zero gradient, which would still move it by its momentum)."""
        stepped = self.release_optimizers if stepped is None else stepped
        losses, metrics = self.release_losses(batch, train, behavior_cloning)
        for name in stepped:
            # A zero gradient, not None: Adam still steps (momentum). Allocated once, then zeroed in place.
            self.optimizers[name].zero_grad(set_to_none=False)
            for p in self._trained[name]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        # Gradients first, steps after: every loss sees the same parameters.
        for name, loss in losses.items():
            loss.backward(inputs=self._trained[name])
        for name in stepped:
            self.optimizers[name].step()
        if "critic" in train:
            self.model.soft_update_target(self.cfg.tau)
        return metrics

    def release_update(self, batch: Batch, behavior_cloning: bool = False, train_actor: bool = True) -> Metrics:
        stepped = tuple(n for n in self.release_optimizers if train_actor or n != "actor")
        everything = frozenset(stepped)
        utd = batch["observations"].shape[0]
        if utd == 1:
            return self.release_step({k: v[0] for k, v in batch.items()}, everything, behavior_cloning, stepped)
        metrics: Metrics = {}
        per_minibatch = frozenset(self.release_critic_optimizers)
        for i in range(utd):
            metrics = self.release_step({k: v[i] for k, v in batch.items()}, per_minibatch, stepped=stepped)
        full = {k: v.flatten(0, 1) for k, v in batch.items()}
        return {**metrics, **self.release_step(full, everything - per_minibatch, behavior_cloning, stepped)}
