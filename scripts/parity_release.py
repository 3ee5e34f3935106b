"""One update of each algorithm, wsrl against the authors' JAX release, on identical inputs.

    python scripts/parity_release.py --release-src /work/release-src \\
        --release-python /work/release-venv/bin/python [--release-exact] \\
        [--algo sac|wsrl-utd|cql|calql|calql-kitchen|wsrl-utd-antmaze|iql|iql-kitchen|all]

Per case: builds one set of weights on wsrl's side (small dims: obs 5, act 3, hidden 16), a
batch, and the random draws; converts the weights with wsrl.release; runs
scripts/parity/release_side.py under the release's Python (its package is also named wsrl) on
them; runs the same update in wsrl; prints, per quantity, both values and their difference, and
for every parameter the largest absolute difference after the update (the release's converted
back with wsrl.release.from_release), next to the largest change the update made.

Cases (the release's configs from experiments/configs/train_config.py, hidden sizes shrunk):
  sac       SACAgent.update on locomotion_wsrl: 10 critics, subsample 2, LayerNorm, one step of
            critic, actor and temperature (the release's offline-style update)
  wsrl-utd  SACAgent.update_high_utd, UTD 4, same config: WSRL's online update
  cql       CQLAgent.update on locomotion_cql with --use_redq (WSRL's pretraining): alpha 5,
            importance sampling, max-target backup
  calql     CalQLAgent.update on antmaze_cql with --use_redq: Lagrange alpha (gap 0.8),
            state-independent std, 4 critic layers
  calql-kitchen  CalQLAgent.update on kitchen_cql with --use_redq (WSRL's kitchen pretraining):
            no importance sampling, alpha 5, 3 layers, no 1e-2 final-layer init
  wsrl-utd-antmaze  update_high_utd on antmaze_wsrl: state-independent std, 4 critic layers,
            max-target backup online
  iql       IQLAgent.update on locomotion_iql: 2 critics, no LayerNorm, Gaussian policy (no tanh)
            with state-independent std, expectile 0.7, temperature 3
  iql-kitchen  IQLAgent.update on kitchen_iql: as iql with policy dropout 0.1, temperature 0.5
--release-exact builds wsrl's side with NetConfig(release_exact=True, shared_critic_head=True).

Random draws. Both sides replay the same arrays, chosen by role; the release's side replaces
jax.random.{normal,uniform,randint} under jax.disable_jit() (release_side.py); wsrl's agents
take every draw from their ``Draws`` with its role (wsrl/agents/draws.py), here ``ReplayDraws``.
Roles, with the release's call site and layout, and wsrl's:
  td_next          policy noise of a' ~ pi(s') in the TD target: sac.py:186 via distrax, shape
                   (n, B, A) with n = 1 or n_actions (max-target backup); wsrl critic_target,
                   [B, A] or [B, n, A] (the release's transposed)
  td_members       target critics of the TD target: sac.py:238 randint(k); wsrl critic_target:
                   with replacement (release_exact) or k distinct members
  actor_pi         a ~ pi(s) of the actor loss: sac.py:295; wsrl actor_loss
  temperature_next a' ~ pi(s') whose entropy the temperature loss uses: sac.py:342;
                   wsrl ReleaseUpdate.temperature_loss (release_exact); wsrl's default reuses the
                   actor loss's sample at s and draws nothing here
  cql_uniform      CQL's uniform actions: cql.py:56, (B, n, A) in [-1, 1); wsrl penalty, u*2-1
  cql_pi, cql_next_pi  CQL's actions from pi(s), pi(s'): cql.py:71,80, (n, B, A); wsrl penalty
  cql_members      critics the CQL penalty is applied to: cql.py:115 randint(k); wsrl penalty
                   (release_exact; by default all members, nothing drawn)
  alpha_*          the Lagrange loss's own CQL draws (cql.py:300-302 recomputes the gap with a
                   fresh rng; wsrl's ReleaseUpdate.losses likewise): fed the same arrays as cql_*
  actor_dropout    the policy's dropout keep masks, one per hidden layer: flax's bernoulli
                   (mlp.py:40); wsrl's nn.Dropout modules of the actor, replaced by the masks
A draw one side makes and the other does not is listed after each case. Member draws are
distinct indices, so a draw with replacement (the release) and one without (wsrl's default)
can take the same members, except, with --release-exact, each role's first draw, which takes
one member twice; uniform values are multiples of 2**-20, so that rand*2-1 reproduces them
exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsrl.agents import AGENTS
from wsrl.agents.draws import Draws
from wsrl.agents.release_update import ReleaseUpdate
from wsrl.config import AgentConfig, NetConfig
from wsrl.nets import ActorCritic
from wsrl.release import flatten, from_release, to_release, unflatten

OBS_DIM, ACT_DIM, N_ACTIONS = 5, 3, 10
PARAM_TOL, LOSS_TOL = 1e-5, 1e-5
GRAD_TOL = 1e-4  # relative; a diagnostic that points at the loss a parameter difference comes from
RELEASE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "distrax", "tensorflow-probability", "numpy", "scipy")
RELEASE_SIDE = Path(__file__).resolve().parent / "parity" / "release_side.py"
SAC_MODULES = ("modules_actor", "modules_critic", "modules_temperature")


@dataclass
class Case:
    agent: str  # the release's agent name, and wsrl's (AGENTS) except for wsrl-utd
    config: str  # experiments/configs/train_config.py entry
    use_redq: bool  # finetune.py --use_redq
    modules: tuple[str, ...]
    net: dict  # wsrl NetConfig fields: the release config's values, written down
    agent_cfg: dict  # wsrl AgentConfig fields, likewise
    critic_hidden: tuple[int, ...] = (16, 16)
    actor_hidden: tuple[int, ...] = (16, 16)
    update: str = "update"
    utd: int = 1
    batch: int = 32
    draw_roles: tuple[str, ...] = ("td_next", "td_members", "actor_pi", "temperature_next")
    losses: tuple[tuple[str, str, str], ...] = field(default=())  # (label, release info key, wsrl metric)


SAC_LOSSES = (("critic loss", "critic/critic_loss", "losses/critic_loss"),
              ("actor loss", "actor/actor_loss", "losses/actor_loss"),
              ("temperature loss", "temperature/temperature_loss", "losses/temperature_loss"))
CQL_LOSSES = (("critic loss", "critic/critic_loss", "losses/critic_loss"),
              ("TD loss", "critic/td_loss", "losses/td_loss"),
              ("CQL penalty (logsumexp Q - Q data)", "critic/cql_diff", "losses/cql_diff"),
              *SAC_LOSSES[1:])
IQL_LOSSES = (("IQL critic (TD) loss", "critic/td_loss", "losses/critic_loss"),
              ("IQL value loss", "value/value_loss", "losses/value_loss"),
              ("IQL actor loss", "actor/actor_loss", "losses/actor_loss"))
CQL_ROLES = ("td_next", "td_members", "actor_pi", "temperature_next",
             "cql_uniform", "cql_pi", "cql_next_pi", "cql_members")
# Shared by sac_config.py, cql_config.py (+ensemble_config.py) for all the SAC-family cases.
SAC_AGENT = dict(discount=0.99, actor_lr=1e-4, critic_lr=3e-4, temperature_lr=1e-4, tau=5e-3,
                 init_temperature=1.0, target_entropy=None, backup_entropy=False, max_target_backup=False)
# --use_redq; kernel_scale_final 1e-2 on the last hidden layer of both networks.
REDQ_NET = dict(ensemble_size=10, subsample_size=2, layer_norm=True, init="orthogonal",
                actor_final_scale=1e-2, critic_final_scale=1e-2)

CASES = {
    "sac": Case("sac", "locomotion_wsrl", False, SAC_MODULES, REDQ_NET, SAC_AGENT, losses=SAC_LOSSES),
    "wsrl-utd": Case("sac", "locomotion_wsrl", False, SAC_MODULES, REDQ_NET, SAC_AGENT, losses=SAC_LOSSES,
                     update="update_high_utd", utd=4, batch=64),
    "cql": Case("cql", "locomotion_cql", True, SAC_MODULES, REDQ_NET,
                dict(SAC_AGENT, cql_n_actions=N_ACTIONS, cql_alpha=5.0, cql_lagrange=False,
                     cql_importance_sample=True, max_target_backup=True, cql_temperature=1.0),
                draw_roles=CQL_ROLES, losses=CQL_LOSSES),
    "calql": Case("calql", "antmaze_cql", True, SAC_MODULES + ("modules_cql_alpha_lagrange",),
                  dict(REDQ_NET, actor_std="uniform"),
                  dict(SAC_AGENT, cql_n_actions=N_ACTIONS, cql_alpha=1.0, cql_lagrange=True, cql_target_gap=0.8,
                       cql_alpha_lr=3e-4, cql_importance_sample=True, max_target_backup=True, cql_temperature=1.0),
                  critic_hidden=(16, 16, 16, 16), draw_roles=CQL_ROLES,
                  losses=(*CQL_LOSSES[:3], ("Cal-QL bound rate", "critic/calql_bound_rate", "calql/bound_rate"),
                          *CQL_LOSSES[3:])),
    "calql-kitchen": Case("calql", "kitchen_cql", True, SAC_MODULES, dict(REDQ_NET, actor_final_scale=None,
                                                                           critic_final_scale=None),
                          dict(SAC_AGENT, cql_n_actions=N_ACTIONS, cql_alpha=5.0, cql_lagrange=False,
                               cql_importance_sample=False, max_target_backup=True, cql_temperature=1.0),
                          critic_hidden=(16, 16, 16), actor_hidden=(16, 16, 16), draw_roles=CQL_ROLES,
                          losses=(*CQL_LOSSES[:3], ("Cal-QL bound rate", "critic/calql_bound_rate", "calql/bound_rate"),
                                  *CQL_LOSSES[3:])),
    "wsrl-utd-antmaze": Case("sac", "antmaze_wsrl", False, SAC_MODULES, dict(REDQ_NET, actor_std="uniform"),
                             dict(SAC_AGENT, cql_n_actions=N_ACTIONS, max_target_backup=True), losses=SAC_LOSSES,
                             critic_hidden=(16, 16, 16, 16), update="update_high_utd", utd=4, batch=64),
    "iql-kitchen": Case("iql", "kitchen_iql", False, ("modules_actor", "modules_critic", "modules_value"),
                        dict(ensemble_size=2, subsample_size=2, layer_norm=False, actor_std="uniform",
                             actor_tanh=False, init="var_scaling", actor_final_scale=1e-2, critic_final_scale=None,
                             actor_dropout=0.1),
                        dict(discount=0.99, actor_lr=3e-4, critic_lr=3e-4, value_lr=3e-4, tau=5e-3, expectile=0.7,
                             iql_temperature=0.5, iql_max_weight=100.0),
                        draw_roles=("actor_dropout",), losses=IQL_LOSSES),
    "iql": Case("iql", "locomotion_iql", False, ("modules_actor", "modules_critic", "modules_value"),
                dict(ensemble_size=2, subsample_size=2, layer_norm=False, actor_std="uniform", actor_tanh=False,
                     init="var_scaling", actor_final_scale=1e-2, critic_final_scale=None),
                dict(discount=0.99, actor_lr=3e-4, critic_lr=3e-4, value_lr=3e-4, tau=5e-3, expectile=0.7,
                     iql_temperature=3.0, iql_max_weight=100.0),
                draw_roles=(), losses=IQL_LOSSES),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release-src", required=True, help="checkout of zhouzypaul/wsrl (891ee35)")
    parser.add_argument("--release-python", required=True, help="Python of the release's environment")
    parser.add_argument("--release-exact", action="store_true", help="wsrl's release-exact mode")
    parser.add_argument("--algo", default="all", choices=[*CASES, "all"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = list(CASES) if args.algo == "all" else [args.algo]
    print(f"release side: {release_versions(args.release_python)}; "
          f"wsrl side: Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    failures = 0
    for name in names:
        failures += run_case(name, CASES[name], args)
    print(f"\n{len(names) - failures}/{len(names)} cases within tolerance "
          f"(parameters {PARAM_TOL:g} absolute, losses {LOSS_TOL:g} relative)")
    return 1 if failures else 0


def release_versions(python: str) -> str:
    code = ("import platform; from importlib.metadata import version; "
            f"print(', '.join(['Python ' + platform.python_version()] + [p + ' ' + version(p) for p in {RELEASE_PACKAGES!r}]))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def wsrl_configs(case: Case, release_exact: bool) -> tuple[NetConfig, AgentConfig]:
    fields = {f.name for f in dataclasses.fields(NetConfig)}
    net = dict(case.net, critic_hidden=case.critic_hidden, actor_hidden=case.actor_hidden)
    if release_exact:
        net.update(release_exact=True, shared_critic_head=True)
    missing = sorted(set(net) - fields)
    if missing:
        raise ValueError(f"this wsrl has no NetConfig field {', '.join(missing)}")
    return NetConfig(**net), AgentConfig(**case.agent_cfg)


def make_inputs(case: Case, net: NetConfig, seed: int) -> tuple[dict, dict, dict]:
    """Initial weights (a wsrl init the release can represent), batch, and draws."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ActorCritic(OBS_DIM, ACT_DIM, net, init_temperature=1.0, init_cql_alpha=1.0)
    sd = model.state_dict()
    # A target unlike the critic, so that using one for the other shows.
    for key in [k for k in sd if k.startswith("target_critic.")]:
        sd[key] = sd[key] * (1 + 0.1 * torch.randn_like(sd[key])) + 0.01 * torch.randn_like(sd[key])
    for prefix in ("critic", "target_critic"):  # the release has one output layer for all members
        for leaf in ("weight", "bias"):
            key = f"{prefix}.mlp.head.{leaf}"
            sd[key] = sd[key][:1].expand_as(sd[key]).clone()

    b = case.batch
    batch = {
        "observations": rng.standard_normal((b, OBS_DIM)),
        "actions": rng.uniform(-0.95, 0.95, (b, ACT_DIM)),
        "next_observations": rng.standard_normal((b, OBS_DIM)),
        "rewards": rng.standard_normal(b),
        "masks": (rng.uniform(size=b) > 0.2).astype(np.float64),
    }
    batch = {k: v.astype(np.float32) for k, v in batch.items()}
    # Through the release's float32 softplus^-1 temperature and back once, so that both sides
    # start from the same values (log alpha = 0 comes back as -4.5e-10).
    sd = from_release(*to_release(sd, net, case.modules), net, sd)
    model.load_state_dict(sd)
    with torch.no_grad():
        q = model.critic(torch.as_tensor(batch["observations"]), torch.as_tensor(batch["actions"]))
    # Cal-QL's bound near the Q-values, so that it is active for some samples and not others.
    batch["mc_returns"] = (q.median(0).values.numpy() + q.std().item() * rng.standard_normal(b)).astype(np.float32)

    size = max(N_ACTIONS * ACT_DIM, *case.actor_hidden) * b
    draws = {}
    for role in case.draw_roles:
        for k in range(case.utd + 1 if role != "actor_dropout" else len(case.actor_hidden)):
            if role.endswith("_members") and net.release_exact and k == 0:
                # One draw of the same member twice: only a draw with replacement (the release's
                # randint, wsrl's release_exact) can take it.
                draws[f"{role}/{k}"] = np.full(net.subsample_size, rng.integers(net.ensemble_size))
            elif role.endswith("_members"):
                draws[f"{role}/{k}"] = rng.choice(net.ensemble_size, net.subsample_size, replace=False)
            elif role == "actor_dropout":
                draws[f"{role}/{k}"] = (rng.uniform(size=size) >= net.actor_dropout).astype(np.uint8)
            elif role.endswith("_uniform"):
                draws[f"{role}/{k}"] = (rng.integers(0, 2**20, size) / 2**19 - 1).astype(np.float32)
            else:
                draws[f"{role}/{k}"] = rng.standard_normal(size).astype(np.float32)
    for name in list(draws):
        if name.startswith("cql_"):
            draws["alpha_" + name[len("cql_"):]] = draws[name]
    return sd, batch, draws


class ReplayDraws(Draws):
    """wsrl's draws (wsrl/agents/draws.py), each the recorded array of its role."""

    def __init__(self, draws: dict, penalty_members: bool):
        """``penalty_members``: the CQL penalty draws its critics (release_exact) rather than taking all."""
        self.draws, self.penalty_members_drawn = draws, penalty_members
        self.counts: dict[str, int] = {}
        self.log: list[dict] = []

    def take(self, role: str, shape: tuple) -> np.ndarray:
        k = self.counts.get(role, 0)
        self.counts[role] = k + 1
        name = f"{role}/{k}"
        if name not in self.draws:
            raise RuntimeError(f"wsrl draws {name} {shape}, which the harness did not record")
        self.log.append({"role": role, "index": k, "shape": list(shape)})
        return self.draws[name]

    def normal(self, role: str):
        def noise(mean: torch.Tensor) -> torch.Tensor:
            flat = self.take(role, tuple(mean.shape))
            if mean.dim() == 2:
                values = flat[: mean.numel()].reshape(mean.shape)
            else:  # [B, n, A]; the release draws (n, B, A)
                b, n, a = mean.shape
                values = flat[: mean.numel()].reshape(n, b, a).transpose(1, 0, 2)
            return torch.as_tensor(np.ascontiguousarray(values), dtype=mean.dtype, device=mean.device)
        return noise

    def uniform(self, role, shape, device):
        values = self.take(role, shape)[: math.prod(shape)].reshape(shape)
        return torch.as_tensor((values + 1) / 2, device=device)  # recorded in [-1, 1)

    def members(self, role, ensemble_size, k, device):
        if k == ensemble_size:
            return None
        return torch.as_tensor(self.take(role, (k,))[:k], device=device)

    def penalty_members(self, role, ensemble_size, k, device):
        return self.members(role, ensemble_size, k, device) if self.penalty_members_drawn else None

    def dropout(self, rate: float):
        """An nn.Dropout forward that applies the recorded keep masks (flax: x / keep_prob where kept)."""
        def forward(x: torch.Tensor) -> torch.Tensor:
            mask = self.take("actor_dropout", tuple(x.shape))[: x[0].numel()].reshape(x.shape[1:])
            return torch.where(torch.as_tensor(mask, dtype=torch.bool), x / (1 - rate), torch.zeros_like(x))
        return forward


def run_release(case: Case, sd: dict, net: NetConfig, batch: dict, draws: dict, args, folder: Path) -> dict:
    params, target = to_release(sd, net, case.modules)
    np.savez(folder / "params.npz", **flatten(params))
    np.savez(folder / "target_params.npz", **flatten(target))
    np.savez(folder / "batch.npz", **batch)
    np.savez(folder / "draws.npz", **draws)
    (folder / "case.json").write_text(json.dumps({
        "agent": case.agent, "config": case.config, "use_redq": case.use_redq, "update": case.update,
        "utd": case.utd, "critic_hidden": list(case.critic_hidden), "actor_hidden": list(case.actor_hidden)}))
    proc = subprocess.run([args.release_python, str(RELEASE_SIDE), "--release-src", args.release_src,
                           "--dir", str(folder)], cwd=folder, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"release side failed:\n{proc.stderr[-4000:]}")
    out = json.loads((folder / "release_out.json").read_text())
    out["params"] = unflatten(dict(np.load(folder / "release_params.npz")))
    out["target_params"] = unflatten(dict(np.load(folder / "release_target_params.npz")))
    out["grads"] = dict(np.load(folder / "release_grads.npz"))
    out["given"] = (params, target)
    return out


def run_wsrl(case: Case, sd: dict, net: NetConfig, cfg: AgentConfig, batch: dict, draws: dict):
    model = ActorCritic(OBS_DIM, ACT_DIM, net, init_temperature=1.0, init_cql_alpha=1.0)
    model.load_state_dict(sd)
    replay = ReplayDraws(draws, penalty_members=net.release_exact)
    agent = AGENTS[case.agent](model, cfg, net, replay)
    update = ReleaseUpdate(agent, replay) if net.release_exact else agent.update
    # The metrics of every step: critic_step per minibatch, or the release's update's step per call.
    steps: list[dict] = []

    def recorded(step):
        def call(*args, **kwargs):
            metrics = step(*args, **kwargs)
            steps.append({k: float(v) for k, v in metrics.items()})
            return metrics
        return call

    if net.release_exact:
        update.step = recorded(update.step)
    else:
        agent.critic_step = recorded(agent.critic_step)
    grads: list[tuple[str, dict]] = []
    names = {id(p): k for k, p in model.named_parameters()}
    for opt_name, opt in agent.optimizers.items():
        opt.step = _recording_step(opt, opt_name, names, grads)
    utd_batch = {k: torch.as_tensor(v).reshape(case.utd, case.batch // case.utd, *v.shape[1:]) for k, v in batch.items()}
    for module in model.actor.modules():
        if isinstance(module, torch.nn.Dropout):
            module.forward = replay.dropout(module.p)
    metrics = update(utd_batch)
    return model.state_dict(), steps, {k: float(v) for k, v in metrics.items()}, replay.log, grads


def _recording_step(opt: torch.optim.Optimizer, opt_name: str, names: dict, grads: list):
    step = opt.step

    def recorded(*args, **kwargs):
        grads.append((opt_name, {names[id(p)]: p.grad.detach().clone() for g in opt.param_groups
                                 for p in g["params"] if p.grad is not None}))
        return step(*args, **kwargs)
    return recorded


def run_case(name: str, case: Case, args) -> int:
    mode = "release-exact" if args.release_exact else "defaults"
    print(f"\n== {name}: release {case.agent} {case.update} on {case.config}"
          f"{' + --use_redq' if case.use_redq else ''} vs wsrl {case.agent} ({mode})")
    try:
        net, cfg = wsrl_configs(case, args.release_exact)
    except ValueError as err:
        print(f"  not run: {err}")
        return 1
    sd, batch, draws = make_inputs(case, net, args.seed)
    with tempfile.TemporaryDirectory(prefix=f"parity-{name}-") as tmp:
        release = run_release(case, sd, net, batch, draws, args, Path(tmp))
    # The weights the release received, converted back, are exactly wsrl's.
    back = from_release(*release["given"], net, sd)
    assert all(torch.equal(back[k], sd[k]) for k in back), "weight conversion is not exact"

    new_sd, steps, metrics, wsrl_draws, wsrl_grads = run_wsrl(case, sd, net, cfg, batch, draws)
    infos = release["infos"]

    ok = True
    print(f"  {'quantity':38s} {'release':>14s} {'wsrl':>14s} {'|diff|':>9s} {'rel':>9s}")
    for label, rkey, wkey in case.losses:
        if rkey.startswith(("critic/", "value/")):  # one per critic step (minibatch)
            released = [info[rkey] for info in infos if rkey in info]
            ours = [step[wkey] for step in steps if wkey in step]
            pairs = [(r, w) for r, w in zip(released, ours + [None] * len(released))]
            labels = [f"{label} [minibatch {i}]" if len(pairs) > 1 else label for i in range(len(pairs))]
        else:
            pairs, labels = [(infos[-1].get(rkey), metrics.get(wkey))], [label]
        for lab, (r, w) in zip(labels, pairs):
            if r is None or w is None:
                print(f"  {lab:38s} {_fmt(r):>14s} {_fmt(w):>14s}   (not reported by {'the release' if r is None else 'wsrl'})")
                ok = False
                continue
            diff = abs(r - w)
            rel = diff / max(abs(r), 1e-12)
            good = rel <= LOSS_TOL
            ok &= good
            print(f"  {lab:38s} {r:14.7g} {w:14.7g} {diff:9.2e} {rel:9.2e}  {'ok' if good else 'DIFF'}")

    ok &= compare_gradients(release["grads"], wsrl_grads, release["given"][0], net, sd)

    released = from_release(release["params"], release["target_params"], net, new_sd)
    compared = _compared_keys(case, sd)
    print(f"  {'parameter':38s} {'max|diff|':>9s} {'max|update|':>11s}")
    for key in compared:
        diff = (released[key] - new_sd[key]).abs().max().item()
        moved = (new_sd[key] - sd[key]).abs().max().item()
        good = diff <= PARAM_TOL
        ok &= good
        print(f"  {key:38s} {diff:9.2e} {moved:11.2e}  {'ok' if good else 'DIFF'}")

    release_roles = sorted({(d["role"], d["index"]) for d in release["draws"]})
    wsrl_roles = sorted({(d["role"], d["index"]) for d in wsrl_draws})
    only_release = [f"{r}/{i}" for r, i in release_roles if (r, i) not in wsrl_roles]
    only_wsrl = [f"{r}/{i}" for r, i in wsrl_roles if (r, i) not in release_roles]
    print(f"  draws: {len(release_roles)} release, {len(wsrl_roles)} wsrl"
          + (f"; only the release draws {', '.join(only_release)}" if only_release else "")
          + (f"; only wsrl draws {', '.join(only_wsrl)}" if only_wsrl else ""))
    print(f"  {name}: {'within tolerance' if ok else 'DIFFERS'}")
    return 0 if ok else 1


# The release's optimizer names and wsrl's; the release module each one trains.
OPTIMIZERS = {"actor": ("actor", "modules_actor"), "critic": ("critic", "modules_critic"),
              "value": ("value", "modules_value"), "temperature": ("temperature", "modules_temperature"),
              "cql_alpha_lagrange": ("cql_alpha", "modules_cql_alpha_lagrange")}
SCALAR_PARAMS = {"modules_temperature": "log_alpha", "modules_cql_alpha_lagrange": "cql_log_alpha"}


def compare_gradients(release_grads: dict, wsrl_grads: list, given: dict, net: NetConfig, sd: dict) -> bool:
    """Each optimizer's non-zero gradients, step by step, release against wsrl (relative to the
    release's largest entry). The multipliers are compared as dL/dalpha: the release's
    d/d softplus^-1(alpha) divided by sigmoid, wsrl's d/d log(alpha) divided by alpha (or, under
    release_exact, its d/d softplus^-1(alpha) divided by sigmoid too)."""
    calls: dict[tuple[int, str], dict] = {}
    for key, g in release_grads.items():
        call, tx, path = key.split("/", 2)
        calls.setdefault((int(call), tx), {})[path] = g
    ok = True
    print(f"  {'gradients (non-zero steps)':38s} {'max rel diff':>12s}  worst parameter")
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    for tx, (opt_name, module) in OPTIMIZERS.items():
        release_steps = []
        for (_, name), tree in sorted(calls.items()):
            own = {p[len(module) + 1:]: g for p, g in tree.items() if p.startswith(module + "/")}
            if name == tx and any(np.any(g) for g in own.values()):
                release_steps.append(own)
        wsrl_steps = [g for name, g in wsrl_grads if name == opt_name and any(bool(v.any()) for v in g.values())]
        if len(release_steps) != len(wsrl_steps):
            print(f"  {opt_name:38s} {len(release_steps)} non-zero steps in the release, {len(wsrl_steps)} in wsrl  DIFF")
            ok = False
        for i, (r, w) in enumerate(zip(release_steps, wsrl_steps)):
            if module in SCALAR_PARAMS:
                key = SCALAR_PARAMS[module]
                converted = {key: torch.tensor(float(r["lagrange"]) / _sigmoid(float(given[module]["lagrange"])))}
                raw = float(sd[key])  # softplus^-1 alpha under release_exact, else log alpha
                w = {key: w[key] / (_sigmoid(raw) if net.release_exact else math.exp(raw))}
            else:
                            converted = from_release({module: unflatten(r)}, {}, net, zeros)
            worst, worst_key, flagged = 0.0, "", []
            for key, gw in w.items():
                gr = converted[key]
                rel = (gr - gw).abs().max().item() / max(gr.abs().max().item(), 1e-12)
                if rel > worst:
                    worst, worst_key = rel, key
                if rel > GRAD_TOL:
                    flagged.append((key, rel))
            label = f"{opt_name} step {i}" if len(release_steps) > 1 else opt_name
            print(f"  {label:38s} {worst:12.2e}  {worst_key}  {'ok' if not flagged else 'DIFF'}")
            for key, rel in flagged if len(flagged) < len(w) else []:
                print(f"  {'':40s}{key} {rel:.2e}")
            ok &= not flagged
    return ok


def _compared_keys(case: Case, sd: dict) -> list[str]:
    """The wsrl parameters the release's agent has a counterpart of."""
    prefixes = {"modules_actor": ("actor.",), "modules_critic": ("critic.", "target_critic."),
                "modules_value": ("value.",), "modules_temperature": ("log_alpha",),
                "modules_cql_alpha_lagrange": ("cql_log_alpha",)}
    wanted = tuple(p for m in case.modules for p in prefixes[m])
    return [k for k in sd if k.startswith(wanted)]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.7g}"


if __name__ == "__main__":
    sys.exit(main())
