"""Ensemble SAC, the WSRL online learner, and the base every other algorithm extends.

One ``update(batch)`` per env step (or per offline step): the batch has a leading UTD axis,
``[utd, minibatch, ...]``; each minibatch drives one critic step followed by its soft target
update, then one actor step and one temperature step use the whole batch (docs/design.md, "The online update").
Every random draw goes through the agent's ``Draws`` (draws.py). The authors' release orders its
update differently (``--release-exact``): that is release_update.py, which drives these losses.
"""

from __future__ import annotations

import torch

from wsrl.agents.draws import Draws
from wsrl.checkpoint import load_optimizer_state, optimizer_state
from wsrl.config import AgentConfig, NetConfig
from wsrl.errors import UserError
from wsrl.nets import ActorCritic

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


def td_target(rewards: torch.Tensor, masks: torch.Tensor, next_q: torch.Tensor, discount: float) -> torch.Tensor:
    """r + gamma * mask * Q(s', a'); mask = 1 - terminated, so a time-limit cut still bootstraps."""
    return rewards + discount * masks * next_q


def temperature_loss(alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Raises alpha while the policy entropy -log pi is below the target, lowers it above."""
    return alpha * (-log_prob.detach() - target_entropy).mean()


def repeat_actions(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, d] -> [B, n, d] (a view): n sampled actions per state."""
    return x.unsqueeze(1).expand(-1, n, -1)


class SAC:
    name = "sac"

    def __init__(self, model: ActorCritic, cfg: AgentConfig, net: NetConfig, draws: Draws | None = None):
        self.model, self.cfg, self.net = model, cfg, net
        self.draws = draws if draws is not None else Draws()
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
        self.trained = {name: [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
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
        loss.backward(inputs=self.trained[name])
        opt.step()

    @property
    def alpha(self) -> torch.Tensor:
        return self.model.temperature().detach()

    def target_members(self, device: torch.device) -> torch.Tensor | None:
        """The target critics of one TD target (None: all of them)."""
        return self.draws.members("td_members", self.net.ensemble_size, self.net.subsample_size, device)

    def critic_target(self, mb: Batch) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        with torch.no_grad():
            next_obs = mb["next_observations"]
            if cfg.max_target_backup:
                next_obs = repeat_actions(next_obs, cfg.cql_n_actions)  # [B, n, d]
            next_actions, next_log_prob = m.actor.sample(next_obs, self.draws.normal("td_next"))
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

    def critic_losses(self, mb: Batch, q: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], Metrics]:
        """The losses of one critic step by optimizer name ("critic", and e.g. CQL's "cql_alpha").
        ``q``: Q(s, a_data) of every member, [E, B], when a subclass has computed it already."""
        q = self.model.critic(mb["observations"], mb["actions"]) if q is None else q
        loss = (q - self.critic_target(mb)).pow(2).mean()
        return {"critic": loss}, {"losses/critic_loss": loss.detach(), "q/q_mean": q.detach().mean()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        m = self.model
        actions, log_prob = m.actor.sample(batch["observations"], self.draws.normal("actor_pi"))
        # The min over *all* critics is the pessimistic estimate the authors' release uses; the
        # 2-member subsample is only for the TD target, where it controls overestimation bias.
        q = m.critic(batch["observations"], actions).min(0).values
        loss = (self.alpha * log_prob - q).mean()
        return loss, log_prob, {"losses/actor_loss": loss.detach(), "policy/entropy": -log_prob.detach().mean()}

    def bc_actor_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, Metrics]:
        """Behaviour cloning with SAC's entropy bonus: maximise log pi(a_data|s), keep the entropy up."""
        m = self.model
        _, log_prob = m.actor.sample(batch["observations"], self.draws.normal("actor_pi"))
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
        metrics: Metrics = {}
        for i in range(batch["observations"].shape[0]):
            metrics = self.critic_step({k: v[i] for k, v in batch.items()})
        full = {k: v.flatten(0, 1) for k, v in batch.items()}
        if train_actor:
            actor_loss, log_prob, actor_metrics = (self.bc_actor_loss if behavior_cloning else self.actor_loss)(full)
            self._step("actor", actor_loss)
        else:
            with torch.no_grad():  # the temperature still tracks the (frozen) policy's entropy
                log_prob = self.model.actor.sample(full["observations"], self.draws.normal("actor_pi"))[1]
            actor_metrics = {"policy/entropy": -log_prob.mean()}
        t_loss = temperature_loss(self.model.temperature(), log_prob, self.target_entropy)
        self._step("temperature", t_loss)
        return {**metrics, **actor_metrics, "losses/temperature_loss": t_loss.detach(), "policy/alpha": self.alpha}
