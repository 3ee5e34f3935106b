"""--precision bf16 against fp32 on the same weights and batch: Q-values, every loss, the gradient
direction of every network; the heads in fp32; the hardware check; checkpoints across precisions.

Tolerances. bf16 keeps 8 significant bits: one rounding is off by at most 2^-9 ~ 0.2% relative
(0.4% between neighbouring values). A hidden activation goes through a handful of such roundings
(the input, each GEMM's output, LayerNorm's output, the affine), and the errors of a 256-term dot
product of independently rounded terms partly cancel, so the last hidden activations of a bf16
network are within ~1% of fp32's. The fp32 head turns that into an error of ~1% of the hidden
layers' contribution to its output, not of the output: a Q-value of 300 whose hidden part is
O(1) errs by ~0.01. A head left in bf16 would round the 300 itself, to a multiple of 2. So:
  * heads: the head's output must equal the head computed in fp64 from its own input to fp32
    precision (rtol 1e-5), which a bf16 head misses by ~1e-3;
  * Q-values and TD targets: within 5% of the spread of Q over the batch (the part the hidden
    layers compute), with Q ~ 300 as after training (measured: 1.6% and 1.2%); a bf16 head errs
    by 112% of it;
  * losses and log-probabilities: within 2% relative (measured: at most 0.5%, the log-prob; the
    losses 0.002-0.2%). The TD loss is taken at Q ~ 300 with TD errors O(1), where a bf16 Q head
    changes it by 23-43%;
  * gradients: cosine similarity >= 0.99 per network (measured: >= 0.9995, and 0.9956 for IQL's
    actor, whose weights exp(3 A) amplify the advantage's error).
Leaving the heads in bf16 (their input not cast, or their output cast back to fp32) fails all
seven numerics tests below (the head, Q, SAC and CQL critic, TD target, actor, IQL tests).
No test here times anything; the speed is scripts/bench_learner.py's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import TINY, run_wsrl
from wsrl import precision
from wsrl.agents import CQL, IQL, SAC
from wsrl.agents.sac import temperature_loss
from wsrl.config import AgentConfig, NetConfig
from wsrl.nets import ActorCritic, EnsembleLinear, EnsembleMLP, set_precision

OBS, ACT, BATCH = 11, 3, 256
NET = NetConfig(critic_hidden=(256, 256), actor_hidden=(256, 256), ensemble_size=4, subsample_size=2)
Q_LEVEL = 300.0
"""Q-values of a trained locomotion critic (returns of ~3 per step over a 1/(1-0.99) horizon)."""


def models() -> tuple[ActorCritic, ActorCritic]:
    """The same weights twice, fp32 and bf16, with every Q and V head at the level of Q_LEVEL."""
    torch.manual_seed(0)
    fp32 = ActorCritic(OBS, ACT, NET, 1.0, 5.0)
    with torch.no_grad():
        for mlp in (fp32.critic.mlp, fp32.target_critic.mlp, fp32.value.mlp):
            mlp.head.bias.fill_(Q_LEVEL)
    bf16 = copy.deepcopy(fp32)
    set_precision(bf16, "bf16")
    return fp32, bf16


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"observations": torch.randn(BATCH, OBS, generator=g), "actions": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
            # r + 0.99 * Q_LEVEL ~ Q_LEVEL: TD errors of O(1) at Q ~ 300, as in training.
            "rewards": (1 - 0.99) * Q_LEVEL + torch.randn(BATCH, generator=g), "next_observations": torch.randn(BATCH, OBS, generator=g),
            "masks": torch.ones(BATCH), "mc_returns": Q_LEVEL + torch.randn(BATCH, generator=g)}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def cosine(a: torch.nn.Module, b: torch.nn.Module) -> float:
    ga = torch.cat([p.grad.flatten() for p in a.parameters() if p.grad is not None])
    gb = torch.cat([p.grad.flatten() for p in b.parameters() if p.grad is not None])
    return float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))


def both(fn, *models_):
    """fn on each model with the same random draws (the actor's noise, the target members)."""
    out = []
    for m in models_:
        torch.manual_seed(2)
        out.append(fn(m))
    return out


def test_hidden_layers_run_in_bf16_and_every_head_in_fp32():
    """The head's output is the fp32 head applied to its input: a head left in bf16 misses by ~1e-3."""
    _, bf16 = models()
    b = batch()
    seen = {}

    def record(name):
        def hook(head, args, out):
            seen.setdefault(name, (head, args[0], out))
        return hook

    for name, mlp in bf16.named_modules():
        if isinstance(mlp, EnsembleMLP):
            mlp.head.register_forward_hook(record(name))
    bf16.critic(b["observations"], b["actions"])
    bf16.actor(b["observations"])
    bf16.value(b["observations"])
    assert set(seen) == {"critic.mlp", "actor.mlp", "value.mlp"}
    for name, (head, x, out) in seen.items():
        assert torch.equal(x, x.bfloat16().float()), f"{name}: the hidden layers did not run in bf16"
        assert out.dtype == torch.float32, f"{name}: head output is {out.dtype}"
        exact = (x.double() @ head.weight.double() + head.bias.double()).float()
        torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-5, msg=f"{name}: head not computed in fp32")


def test_bf16_last_fp32_runs_only_the_last_hidden_layer_in_fp32():
    """The boundary the learning comparison tests: every hidden layer in bf16 but the last, so the
    heads read activations computed in fp32 from bf16 inputs."""
    fp32, _ = models()
    mixed = copy.deepcopy(fp32)
    set_precision(mixed, "bf16-last-fp32")
    b = batch()
    dtypes: dict[str, list[torch.dtype]] = {}
    for name, mlp in mixed.named_modules():
        if isinstance(mlp, EnsembleMLP):
            for layer in mlp.hidden:
                if isinstance(layer, EnsembleLinear):
                    layer.register_forward_hook(lambda m, args, out, name=name: dtypes.setdefault(name, []).append(out.dtype))
    mixed.critic(b["observations"], b["actions"])
    mixed.actor(b["observations"])
    n = len(NET.critic_hidden)
    assert dtypes["critic.mlp"] == [torch.bfloat16] * (n - 1) + [torch.float32]
    assert dtypes["actor.mlp"] == [torch.bfloat16] * (len(NET.actor_hidden) - 1) + [torch.float32]
    # Closer to fp32 than plain bf16 is, where the Q-values are ~300.
    q32, q_mixed = fp32.critic(b["observations"], b["actions"]), mixed.critic(b["observations"], b["actions"])
    set_precision(mixed, "bf16")
    assert relative(q_mixed, q32) < relative(mixed.critic(b["observations"], b["actions"]), q32)


def test_q_values_match_fp32():
    fp32, bf16 = models()
    b = batch()
    with torch.no_grad():
        q32, q16 = (m.critic(b["observations"], b["actions"]) for m in (fp32, bf16))
    assert q16.dtype == torch.float32
    spread = float(q32.std())
    assert float((q16 - q32).abs().max()) <= 0.05 * spread


@pytest.mark.parametrize("cls", [SAC, CQL])
def test_critic_losses_and_gradients_match_fp32(cls):
    fp32, bf16 = models()
    agents = [cls(m, AgentConfig(max_target_backup=cls is CQL), NET) for m in (fp32, bf16)]
    b = batch()
    (l32, m32), (l16, m16) = both(lambda a: a.critic_losses(b), *agents)
    for key in ("losses/td_loss", "losses/cql_diff") if cls is CQL else ("losses/critic_loss",):
        assert m16[key].dtype == torch.float32, key
        assert relative(m16[key], m32[key]) <= 0.02, key
    l32["critic"].backward()
    l16["critic"].backward()
    assert cosine(fp32.critic, bf16.critic) >= 0.99


def test_td_target_matches_fp32():
    fp32, bf16 = models()
    agents = [SAC(m, AgentConfig(max_target_backup=False), NET) for m in (fp32, bf16)]
    y32, y16 = both(lambda a: a.critic_target(batch()), *agents)
    assert y16.dtype == torch.float32
    assert float((y16 - y32).abs().max()) <= 0.05 * float(y32.std())


def test_actor_and_temperature_losses_and_gradients_match_fp32():
    fp32, bf16 = models()
    agents = [SAC(m, AgentConfig(), NET) for m in (fp32, bf16)]
    b = batch()
    (a32, lp32, _), (a16, lp16, _) = both(lambda a: a.actor_loss(b), *agents)
    assert a16.dtype == lp16.dtype == torch.float32
    assert relative(a16, a32) <= 0.02
    assert relative(lp16, lp32) <= 0.02
    t32, t16 = (temperature_loss(m.temperature(), lp, -ACT) for m, lp in ((fp32, lp32), (bf16, lp16)))
    assert relative(t16, t32) <= 0.02
    a32.backward()
    a16.backward()
    assert cosine(fp32.actor, bf16.actor) >= 0.99
    # The actor's gradient flows through the critic (frozen in the actor step): check it too.
    assert cosine(fp32.critic, bf16.critic) >= 0.99


def test_iql_losses_and_gradients_match_fp32():
    fp32, bf16 = models()
    agents = [IQL(m, AgentConfig(), NET) for m in (fp32, bf16)]
    b = batch()
    for name, net in (("value_loss", "value"), ("q_loss", "critic"), ("weighted_bc_loss", "actor")):
        (l32, _), (l16, _) = both(lambda a: getattr(a, name)(b), *agents)
        assert l16.dtype == torch.float32, name
        assert relative(l16, l32) <= 0.02, name
        l32.backward()
        l16.backward()
        assert cosine(getattr(fp32, net), getattr(bf16, net)) >= 0.99, name


# The hardware check, with the detection monkeypatched (this machine's CPU may well have bf16).

def test_cpu_without_native_bf16_runs_fp32_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert precision.effective_precision("bf16", torch.device("cpu")) == "fp32"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "--precision bf16" in lines[0] and "avx512_bf16" in lines[0] and "fp32" in lines[0]


def test_cpu_with_native_bf16_runs_bf16_silently(monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision.effective_precision("bf16", torch.device("cpu")) == "bf16"
    assert precision.effective_precision("fp32", torch.device("cpu")) == "fp32"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_cuda_below_sm80_runs_fp32_and_says_why(monkeypatch, capsys, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert precision.effective_precision("bf16", torch.device("cuda")) == expected
    out = capsys.readouterr().out
    assert (out.count("\n") == 1 and "sm75" in out and "running fp32" in out) if expected == "fp32" else out == ""


def test_bf16_run_on_a_cpu_without_it_records_fp32(tmp_path, hopper_file, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    out = tmp_path / "run"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 2, "--out", out,
                    "--eval-every", 2, "--save-every", 2, "--precision", "bf16", *TINY) == 0
    assert "--precision bf16" in capsys.readouterr().out
    from wsrl.checkpoint import load_checkpoint
    assert load_checkpoint(out)[0]["config"]["precision"] == "fp32"


def test_checkpoints_move_between_precisions(tmp_path, hopper_file, capsys):
    """A bf16 pretraining fine-tunes in fp32, and a bf16 fine-tuning evaluates in either precision
    (by default in its own, which reproduces its logged evaluation)."""
    import json

    from wsrl.checkpoint import load_checkpoint

    if precision.bf16_slower(torch.device("cpu")) is not None:
        pytest.skip("this CPU runs --precision bf16 as fp32")
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 4, "--out", pre,
                    "--eval-every", 4, "--save-every", 4, "--batch-size", 16, "--precision", "bf16", *TINY) == 0
    assert load_checkpoint(pre)[0]["config"]["precision"] == "bf16"
    assert run_wsrl("finetune", "--checkpoint", pre, "--out", ft, "--steps", 40, "--warmup-steps", 30, "--batch-size", 16,
                    "--eval-every", 40, "--precision", "bf16", *TINY) == 0
    logged = [json.loads(line) for line in (ft / "metrics.jsonl").read_text().splitlines()]
    last = [r["eval/return"] for r in logged if "eval/return" in r][-1]
    capsys.readouterr()
    for flag in ([], ["--precision", "fp32"], ["--precision", "bf16"]):
        assert run_wsrl("evaluate", ft, "--episodes", 2, *flag) == 0
        line = capsys.readouterr().out
        assert "return" in line
        if flag != ["--precision", "fp32"]:
            assert f"return {last:.1f}" in line, line
    assert run_wsrl("finetune", "--checkpoint", pre, "--out", tmp_path / "fp32", "--steps", 35, "--warmup-steps", 30,
                    "--batch-size", 16, "--eval-every", 35, *TINY) == 0
    assert load_checkpoint(tmp_path / "fp32")[0]["config"]["precision"] == "fp32"
