"""Learner throughput against the physical limit and against plain PyTorch, in one run.

    python scripts/bench_learner.py [--device cpu|cuda] [--precision fp32|bf16|bf16-last-fp32] [--json out.json] [--seconds 3] [--rounds 3]

Measures, interleaved round by round so that a shared machine's load hits all of them alike:
  peak       fp32 (and with --precision bf16, bf16) matmul throughput of this device (large
             square GEMM, same thread setting)
  wsrl       the WSRL online update as the wsrl recipe runs it on locomotion (HalfCheetah: obs 17,
             act 6; 10 critics, target min over 2, no max-target backup; 256x2 + LayerNorm; batch
             1024 = 4 critic minibatches of 256, then one actor and one temperature step on all
             1024), via wsrl.fast
  reference  the same update written the way most PyTorch code does it (below)
  cql        the CQL pretraining update of the wsrl recipe on locomotion (10 actions of each kind,
             10 critics, max-target backup over 10 next actions, batch 256)
With --precision bf16 the wsrl and cql updates also run with bf16 hidden layers (same initial
weights), and the bf16 matmul peak is measured, all in the same rounds; --precision bf16-last-fp32
likewise, with the last hidden layer of each network in fp32.
Reported: env-steps/s (one WSRL update per env step), critic updates/s, updates/s, the FLOPs of
one update counted analytically, achieved GFLOP/s and the fraction of each peak, ours /
reference, and bf16 / fp32.
Figures are medians over rounds; compare ratios, not absolute numbers, on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import time
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsrl.agents import CQL, SAC
from wsrl.config import AgentConfig, NetConfig
from wsrl.data.buffer import ReplayBuffer
from wsrl.fast import auto_threads, configure_cpu, make_update
from wsrl.nets import ActorCritic, set_precision
from wsrl.precision import DTYPES, Precision, bf16_slower
from wsrl.recipes import finetune_defaults, pretrain_defaults

OBS, ACT = 17, 6  # HalfCheetah


# FLOPs, counted analytically. A dense layer's forward is 2*B*in*out (bias, LayerNorm, ReLU and
# Adam are not counted: they are O(B*out), not O(B*in*out)). A trained layer's backward is 2x its
# forward (weight grads + input grads), except that the first layer needs no input grad; a frozen
# network that gradients flow through (the critic in the actor step) costs 1x its forward for
# input grads. Only the FLOPs the algorithm needs are counted: the TD target evaluates the
# 2 subsampled target critics, not all 10 (our update and the reference both do just that).

def _layers(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> list[tuple[int, int]]:
    dims = [in_dim, *hidden, out_dim]
    return list(zip(dims[:-1], dims[1:]))


def mlp_flops(rows: int, layers: list[tuple[int, int]], members: int, mode: str) -> float:
    """mode: 'fwd' (no grad), 'train' (forward + weight and input grads, no grad of the input
    itself), 'through' (frozen weights, forward + input grads down to the input)."""
    fwd = [2.0 * rows * members * i * o for i, o in layers]
    if mode == "fwd":
        return sum(fwd)
    if mode == "train":
        return sum(fwd) + 2 * sum(fwd) - fwd[0]  # first layer: weight grad only
    return 2 * sum(fwd)


def wsrl_flops(net: NetConfig, batch: int, utd: int) -> dict[str, float]:
    critic = _layers(OBS + ACT, net.critic_hidden, 1)
    actor = _layers(OBS, net.actor_hidden, 2 * ACT)
    mb = batch // utd
    critic_step = (mlp_flops(mb, actor, 1, "fwd")  # a' ~ pi(s')
                   + mlp_flops(mb, critic, net.subsample_size, "fwd")  # target Q of 2 members
                   + mlp_flops(mb, critic, net.ensemble_size, "train"))
    actor_step = mlp_flops(batch, actor, 1, "train") + mlp_flops(batch, critic, net.ensemble_size, "through")
    return {"critic_steps": utd * critic_step, "actor_step": actor_step, "total": utd * critic_step + actor_step}


def cql_flops(net: NetConfig, batch: int, n: int) -> dict[str, float]:
    critic = _layers(OBS + ACT, net.critic_hidden, 1)
    actor = _layers(OBS, net.actor_hidden, 2 * ACT)
    critic_step = (mlp_flops(batch * n, actor, 1, "fwd")  # n next actions for the max backup
                   + mlp_flops(batch * n, critic, net.subsample_size, "fwd")  # their target Q, 2 members
                   + mlp_flops(2 * batch * n, actor, 1, "fwd")  # n actions from pi(s) and from pi(s')
                   + mlp_flops(batch * (1 + 3 * n), critic, net.ensemble_size, "train"))  # data + 3n sampled
    actor_step = mlp_flops(batch, actor, 1, "train") + mlp_flops(batch, critic, net.ensemble_size, "through")
    return {"critic_steps": critic_step, "actor_step": actor_step, "total": critic_step + actor_step}


# The plain reference: what a typical PyTorch REDQ/WSRL learner looks like. One nn.Module per
# critic in a Python loop, loss.backward() into every parameter (the actor loss also fills the
# critics' .grad, which is then thrown away by zero_grad), default Adam, a per-parameter Python
# loop for the target update. Same losses, same sizes, same initial weights.

class PlainCritic(nn.Module):
    def __init__(self, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = OBS + ACT
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


class PlainActor(nn.Module):
    def __init__(self, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = OBS
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, 2 * ACT))

    def forward(self, obs):
        mean, log_std = self.net(obs).chunk(2, -1)
        log_std = log_std.clamp(math.log(1e-5), math.log(10.0))
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob


def _copy_mlp(plain: nn.Sequential, ensemble_mlp, member: int) -> None:
    """Load member ``member`` of a stacked EnsembleMLP into a plain nn.Sequential."""
    stacked = [m for m in list(ensemble_mlp.hidden) + [ensemble_mlp.head] if hasattr(m, "weight")]
    own = [m for m in plain if hasattr(m, "weight")]
    with torch.no_grad():
        for dst, src in zip(own, stacked):
            e = member if src.weight.shape[0] > 1 else 0
            if isinstance(dst, nn.Linear):
                dst.weight.copy_(src.weight[e].T)
            else:
                dst.weight.copy_(src.weight[e, 0])
            dst.bias.copy_(src.bias[e].reshape(-1))


class PlainWSRL:
    def __init__(self, model: ActorCritic, net: NetConfig, cfg: AgentConfig):
        self.cfg, self.k = cfg, net.subsample_size
        device = model.log_alpha.device
        self.actor = PlainActor(net.actor_hidden).to(device)
        _copy_mlp(self.actor.net, model.actor.mlp, 0)
        self.critics = nn.ModuleList(PlainCritic(net.critic_hidden) for _ in range(net.ensemble_size)).to(device)
        for e, c in enumerate(self.critics):
            _copy_mlp(c.net, model.critic.mlp, e)
        self.targets = copy.deepcopy(self.critics)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temperature_lr)

    def update(self, batch):
        cfg = self.cfg
        for i in range(batch["observations"].shape[0]):
            obs, act, rew = batch["observations"][i], batch["actions"][i], batch["rewards"][i]
            next_obs, mask = batch["next_observations"][i], batch["masks"][i]
            with torch.no_grad():
                next_act, _ = self.actor(next_obs)
                idx = np.random.choice(len(self.targets), self.k, replace=False)
                next_q = torch.stack([self.targets[j](next_obs, next_act) for j in idx]).min(0).values
                target = rew + cfg.discount * mask * next_q
            loss = sum(((c(obs, act) - target) ** 2).mean() for c in self.critics) / len(self.critics)
            self.critic_opt.zero_grad()
            loss.backward()
            self.critic_opt.step()
            with torch.no_grad():
                for p, tp in zip(self.critics.parameters(), self.targets.parameters()):
                    tp.data.mul_(1 - cfg.tau).add_(cfg.tau * p.data)
        obs = batch["observations"].flatten(0, 1)
        act, log_prob = self.actor(obs)
        q = torch.stack([c(obs, act) for c in self.critics]).min(0).values
        alpha = self.log_alpha.exp().detach()
        actor_loss = (alpha * log_prob - q).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_loss = self.log_alpha.exp() * (-log_prob.detach() + ACT).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        return {"losses/critic_loss": loss.detach(), "losses/actor_loss": actor_loss.detach()}


def measure_peak(device: torch.device, seconds: float, dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate in ``dtype`` over a few square sizes (TF32 off on CUDA: fp32 is the fp32 limit)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        rate = 2.0 * n ** 3 * timed(lambda: a @ b, device, seconds / len(sizes))
        best = max(best, rate)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, seconds: float, min_calls: int = 2) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one untimed call)."""
    fn()
    sync(device)
    start, calls = time.perf_counter(), 0
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync(device)
    return calls / (time.perf_counter() - start)


def random_buffer(device: torch.device, n: int = 100_000) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(n, OBS, ACT, device, seed=0)
    buf.add(observations=rng.normal(size=(n, OBS)), actions=rng.uniform(-1, 1, (n, ACT)),
            rewards=rng.normal(size=n), next_observations=rng.normal(size=(n, OBS)), masks=np.ones(n))
    return buf


def _agent(cls, model: ActorCritic, cfg, net: NetConfig, precision: str):
    """An agent on its own copy of ``model``'s weights, its hidden layers in ``precision``."""
    model = copy.deepcopy(model)
    set_precision(model, precision)
    return cls(model, cfg, net)


def _rate(flops: float, per_s: float, peaks: dict[str, float]) -> dict:
    return {"gflops": flops * per_s / 1e9, **{f"fraction_of_{p}_peak": flops * per_s / v for p, v in peaks.items()}}


def run(device: torch.device, seconds: float, rounds: int, compile_: bool, threads: int, precision: str) -> dict:
    torch.manual_seed(0)
    # The settings come from the recipe, not the dataclass defaults: AgentConfig's
    # max_target_backup=True is CQL's, and an online SAC update with it samples 10 next actions
    # per state for the TD target, and took ~1.5x the time of the WSRL update the recipe runs.
    online, offline = finetune_defaults("", "wsrl", None, None), pretrain_defaults("", "wsrl", None)
    run_cfg = dataclasses.replace(online, compile=compile_, threads=threads)
    # 0 = the cores not kept busy by other processes: on a shared machine an OpenMP team that
    # shares a core with a busy process stalls at every barrier and the figures mean nothing.
    threads_used = configure_cpu(threads or auto_threads()) if device.type == "cpu" else torch.get_num_threads()
    net, agent_cfg, batch, utd = online.net, online.agent, run_cfg.batch_size, run_cfg.utd
    buf = random_buffer(device)
    wsrl_model = ActorCritic(OBS, ACT, net, 1.0, agent_cfg.cql_alpha).to(device)
    cql_model = ActorCritic(OBS, ACT, offline.net, 1.0, offline.agent.cql_alpha).to(device)
    plain = PlainWSRL(wsrl_model, net, agent_cfg)
    # The updates in fp32 and in the precision asked for; the matmul peaks of fp32 and bf16.
    precisions = ("fp32", precision) if precision != "fp32" else ("fp32",)
    dtypes = ("fp32", "bf16") if precision != "fp32" else ("fp32",)
    cases = {f"peak_{d}": (lambda s, d=d: measure_peak(device, s, DTYPES[d])) for d in dtypes}
    cases["reference"] = lambda s: timed(lambda: plain.update(buf.sample(utd, batch // utd)), device, s)
    for p in precisions:  # same initial weights in every precision
        wsrl_update = make_update(_agent(SAC, wsrl_model, agent_cfg, net, p), run_cfg, device)
        cql_update = make_update(_agent(CQL, cql_model, offline.agent, offline.net, p), run_cfg, device)
        cases[f"wsrl_{p}"] = lambda s, u=wsrl_update: timed(lambda: u(buf.sample(utd, batch // utd)), device, s)
        cases[f"cql_{p}"] = lambda s, u=cql_update: timed(lambda: u(buf.sample(1, offline.batch_size)), device, s)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(case(seconds))
    med = {k: statistics.median(v) for k, v in samples.items()}

    peaks = {d: med[f"peak_{d}"] for d in dtypes}
    wf, cf = wsrl_flops(net, batch, utd), cql_flops(offline.net, offline.batch_size, offline.agent.cql_n_actions)
    buf_bytes = ReplayBuffer(1, OBS, ACT, "cpu").bytes_per_transition
    report = {
        "device": str(device), "threads": threads_used, "compile": compile_, "rounds": rounds, "precisions": precisions,
        "peak_gflops": {p: v / 1e9 for p, v in peaks.items()},
        "wsrl_gflop_per_update": wf["total"] / 1e9, "cql_gflop_per_update": cf["total"] / 1e9,
        "reference": {"env_steps_per_s": med["reference"], "critic_updates_per_s": utd * med["reference"],
                      **_rate(wf["total"], med["reference"], peaks)},
        "wsrl_over_reference": med["wsrl_fp32"] / med["reference"],
        "replay_bytes_per_transition": buf_bytes,
        "replay_mb_per_1m_transitions": buf_bytes * 1e6 / 2 ** 20,
        "samples": samples,
    }
    for p in precisions:
        report[p] = {"wsrl": {"env_steps_per_s": med[f"wsrl_{p}"], "critic_updates_per_s": utd * med[f"wsrl_{p}"],
                              **_rate(wf["total"], med[f"wsrl_{p}"], peaks)},
                     "cql": {"updates_per_s": med[f"cql_{p}"], **_rate(cf["total"], med[f"cql_{p}"], peaks)}}
    if precision != "fp32":
        # Ratios within each round, then their median: a shared machine's load changes between rounds.
        report["precision"] = precision
        report["over_fp32"] = {k: statistics.median(b / f for b, f in zip(samples[f"{k}_{precision}"], samples[f"{k}_fp32"]))
                               for k in ("wsrl", "cql")}
        report["over_fp32"]["peak"] = statistics.median(b / f for b, f in zip(samples["peak_bf16"], samples["peak_fp32"]))
        report["bf16_native"] = bf16_slower(device) is None
    return report


def table(r: dict) -> str:
    peaks = r["peak_gflops"]

    def of_peaks(x: dict) -> str:
        return "  ".join(f"{100 * x[f'fraction_of_{p}_peak']:5.1f}% of {p} peak" for p in peaks)

    lines = [f"device {r['device']}, {r['threads']} thread(s), compile={r['compile']}, median of {r['rounds']} rounds"]
    lines += [f"{p} matmul peak              {v:8.1f} GFLOP/s" for p, v in peaks.items()]
    for p in r["precisions"]:
        w, c = r[p]["wsrl"], r[p]["cql"]
        lines += [f"WSRL update, {p}            {w['env_steps_per_s']:8.2f} env-steps/s  {w['critic_updates_per_s']:7.2f} critic-updates/s"
                  f"  {w['gflops']:6.1f} GFLOP/s  {of_peaks(w)}  ({r['wsrl_gflop_per_update']:.2f} GFLOP/update)"]
        if p == "fp32":
            ref = r["reference"]
            lines += [f"WSRL update, plain PyTorch  {ref['env_steps_per_s']:8.2f} env-steps/s  {ref['critic_updates_per_s']:7.2f} critic-updates/s"
                      f"  {ref['gflops']:6.1f} GFLOP/s  {of_peaks(ref)}",
                      f"ours (fp32) / reference     {r['wsrl_over_reference']:8.2f}x"]
        lines += [f"CQL update, {p}             {c['updates_per_s']:8.2f} updates/s  {c['gflops']:6.1f} GFLOP/s"
                  f"  {of_peaks(c)}  ({r['cql_gflop_per_update']:.2f} GFLOP/update)"]
    if "over_fp32" in r:
        x = r["over_fp32"]
        lines += [f"{r['precision']} / fp32 (median of per-round ratios): WSRL {x['wsrl']:.2f}x, CQL {x['cql']:.2f}x, "
                  f"matmul peak bf16 / fp32 {x['peak']:.2f}x"
                  + ("" if r["bf16_native"] else "  (no native bf16 here: emulated)")]
    lines += [f"replay memory               {r['replay_bytes_per_transition']} bytes/transition (float32), "
              f"{r['replay_mb_per_1m_transitions']:.0f} MiB per 1M transitions"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="", help="also write the report to this JSON file")
    p.add_argument("--seconds", type=float, default=3.0, help="timing window per case and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile our update (as wsrl --compile)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for all cases; 0 = wsrl's auto setting")
    p.add_argument("--precision", choices=get_args(Precision), default="fp32",
                   help="bf16 (or bf16-last-fp32): also those updates and the bf16 matmul peak, against fp32 in the same rounds")
    a = p.parse_args()
    device = torch.device(a.device)
    if a.precision != "fp32" and bf16_slower(device):
        print(f"note: {bf16_slower(device)}; measuring bf16 anyway, as wsrl would not run it here")
    report = run(device, a.seconds, a.rounds, a.compile, a.threads, a.precision)
    print(table(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
