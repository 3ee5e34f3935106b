"""Learning-rate schedules (wsrl/schedule.py) and the critic-first actor delay."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import TINY, random_rollouts, run_wsrl, write_d4rl
from test_fast import NET, batches, make_agent
from wsrl.checkpoint import load_checkpoint
from wsrl.config import FinetuneConfig
from wsrl.schedule import LrSchedule, lr_factor

BEFORE = Path(__file__).parent / "data" / "constant_lr_before.json"
"""Metrics of `tiny_runs` recorded with the code before learning-rate schedules existed (commit 128cae0)."""
COMPARED = ("losses/", "q/", "policy/", "cql/", "eval/return")


def tiny_runs(tmp: Path) -> dict[str, dict[str, float]]:
    """A tiny CQL pretraining and a WSRL fine-tuning of it, one thread (bit-reproducible); the
    compared metrics of both metrics.jsonl files, by phase and step."""
    data = tmp / "hopper.hdf5"
    write_d4rl(data, random_rollouts())
    pre, ft = tmp / "pre", tmp / "ft"
    common = [*TINY, "--log-every", 10, "--threads", 1]
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", data, "--steps", 40, "--out", pre,
                    "--eval-every", 40, "--save-every", 40, "--batch-size", 64, *common) == 0
    assert run_wsrl("finetune", "--checkpoint", pre, "--out", ft, "--steps", 140, "--warmup-steps", 100,
                    "--batch-size", 32, "--eval-every", 140, *common) == 0
    out = {}
    for name, run in (("pretrain", pre), ("finetune", ft)):
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            for key, value in row.items():
                if key.startswith(COMPARED):
                    out[f"{name}/{row['step']}/{key}"] = value
    return out


def machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def test_constant_schedule_reproduces_the_code_before_it_bit_for_bit(tmp_path):
    """`constant` and no delay: the same numbers as before the lr became a tensor. Float results
    depend on the CPU's kernels, so the recorded run is compared on the machine kind it came from;
    the next test checks the same claim on any machine, against a float lr in the same process."""
    before = json.loads(BEFORE.read_text())
    if before["machine"] != machine():
        pytest.skip(f"recorded with {before['machine']}, this is {machine()}")
    assert tiny_runs(tmp_path) == before["metrics"]


@pytest.mark.parametrize("release_exact", [False, True])
def test_tensor_lr_steps_exactly_as_a_float_lr(release_exact):
    net = replace(NET, release_exact=release_exact)
    tensor_lr, float_lr = make_agent(net=net), make_agent(net=net)
    for opt in float_lr.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = float(group["lr"])  # the optimizers as they were built before schedules
    schedule = LrSchedule(FinetuneConfig(), tensor_lr.optimizers, tensor_lr.base_lrs, total_updates=10)
    for i, batch in enumerate(batches(3)):
        schedule.apply(i)
        torch.manual_seed(i)
        a = tensor_lr.update(batch)
        torch.manual_seed(i)
        b = float_lr.update(batch)
        assert all(torch.equal(a[k], b[k]) for k in a)
    for (name, p), q in zip(tensor_lr.model.named_parameters(), float_lr.model.parameters()):
        assert torch.equal(p, q), name


def test_schedules_at_hand_computed_update_counts():
    kw = dict(total_updates=10, warmup_start=0.1, warmup_updates=4, decay_fraction=0.3, final=0.1)
    assert [lr_factor(u, "constant", **kw) for u in (0, 5, 99)] == [1.0, 1.0, 1.0]
    # rewarm: 0.1 + 0.9 * (u + 1) / 4, then 1 from update 3 on.
    assert [lr_factor(u, "rewarm", **kw) for u in (0, 1, 2, 3, 9)] == pytest.approx([0.325, 0.55, 0.775, 1.0, 1.0])
    # wsd: the same ramp; the last 3 of 10 updates decay 1 -> 0.1: 0.7, 0.4, 0.1 (and 0.1 after the end).
    assert [lr_factor(u, "wsd", **kw) for u in (0, 3, 6, 7, 8, 9, 12)] == pytest.approx(
        [0.325, 1.0, 1.0, 0.7, 0.4, 0.1, 0.1])
    # wsd without a ramp; a run so short that ramp and decay overlap takes the smaller factor.
    assert lr_factor(0, "wsd", **{**kw, "warmup_updates": 0}) == 1.0
    assert lr_factor(1, "wsd", 2, 0.0, 4, 0.5, 0.0) == pytest.approx(0.0)


def test_schedule_writes_the_optimizers_own_tensors_only_where_asked():
    agent = make_agent()
    tensors = {name: opt.param_groups[0]["lr"] for name, opt in agent.optimizers.items()}
    cfg = FinetuneConfig(lr_schedule="rewarm", lr_warmup_updates=4, lr_warmup_start=0.0, lr_schedule_on=("actor",))
    schedule = LrSchedule(cfg, agent.optimizers, agent.base_lrs, total_updates=10)
    schedule.apply(1)
    assert all(opt.param_groups[0]["lr"] is tensors[name] for name, opt in agent.optimizers.items())
    assert float(tensors["actor"]) == pytest.approx(agent.base_lrs["actor"] * 0.5)
    assert float(tensors["critic"]) == agent.base_lrs["critic"]


def _snapshot(agent, name: str):
    module = {"actor": agent.model.actor, "critic": agent.model.critic}[name]
    params = [p.detach().clone() for p in module.parameters()]
    state = copy.deepcopy(agent.optimizers[name].state_dict()["state"])
    return params, state


def _same(a, b) -> bool:
    (pa, sa), (pb, sb) = a, b
    return (all(torch.equal(x, y) for x, y in zip(pa, pb)) and sa.keys() == sb.keys()
            and all(torch.equal(sa[k][f], sb[k][f]) for k in sa for f in sa[k]))


@pytest.mark.parametrize("release_exact", [False, True])
def test_critic_first_update_leaves_the_actor_and_its_optimizer_alone(release_exact):
    net = replace(NET, release_exact=release_exact)
    agent = make_agent(net=net)
    data = batches(4)
    agent.update(data[0])  # optimizer state exists, so "unchanged" covers the moments and step count
    actor, critic, alpha = _snapshot(agent, "actor"), _snapshot(agent, "critic"), agent.model.log_alpha.detach().clone()
    for batch in data[1:]:
        agent.update(batch, train_actor=False)
    assert _same(_snapshot(agent, "actor"), actor)
    assert not _same(_snapshot(agent, "critic"), critic)
    assert not torch.equal(agent.model.log_alpha, alpha)  # the temperature still trains
    agent.update(data[0])
    assert not _same(_snapshot(agent, "actor"), actor)


def _finetune(out: Path, pretrained: Path, *extra) -> None:
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", out, "--steps", 140, "--warmup-steps", 100,
                    "--batch-size", 32, "--eval-every", 1000, "--save-every", 10, "--keep-checkpoints", 10,
                    "--lr-schedule", "wsd", "--lr-warmup-updates", 10, "--lr-decay-fraction", 0.5, "--lr-final", 0.1,
                    "--actor-update-delay", 15, *TINY, "--log-every", 5, "--threads", 1, *extra) == 0


def test_resumed_run_continues_schedule_and_delay_exactly(tmp_path, pretrained):
    full, part = tmp_path / "full", tmp_path / "part"
    _finetune(full, pretrained)
    # 40 updates (steps 101-140): ramp over updates 0-9, actor frozen for 0-14, decay over 20-39.
    lrs = {}
    for line in (full / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train/lr_actor" in row:
            lrs[row["step"]] = row["train/lr_actor"]
    actor_lr = load_checkpoint(pretrained)[0]["config"]["agent"]["actor_lr"]
    assert lrs[105] == pytest.approx(actor_lr * 0.5)  # update 4: (4 + 1) / 10 of the ramp
    assert lrs[120] == pytest.approx(actor_lr)
    assert lrs[130] == pytest.approx(actor_lr * 0.55)  # update 29: 10 of 20 decay updates to 0.1
    assert lrs[140] == pytest.approx(actor_lr * 0.1)
    # The actor trained 40 - 15 times on top of its pretraining steps.
    pre_steps = load_checkpoint(pretrained)[2]["optimizers"]["actor"]["state"][0]["step"].item()
    assert load_checkpoint(full)[2]["optimizers"]["actor"]["state"][0]["step"].item() - pre_steps == 25
    # Interrupted inside the ramp and the delay (update 10 of 40): drop the later checkpoints.
    shutil.copytree(full, part)
    for ckpt in (part / "checkpoints").iterdir():
        if int(ckpt.name.split("_")[1]) > 110:
            shutil.rmtree(ckpt)
    assert run_wsrl("finetune", "--resume", part) == 0
    (meta_a, model_a, state_a), (meta_b, model_b, state_b) = load_checkpoint(full), load_checkpoint(part)
    assert meta_a["step"] == meta_b["step"] == 140
    for key, value in model_a.items():
        assert torch.equal(value, model_b[key]), key
    for name, opt in state_a["optimizers"].items():
        assert [float(g["lr"]) for g in opt["param_groups"]] == [
            float(g["lr"]) for g in state_b["optimizers"][name]["param_groups"]], name
    assert (full / "metrics.jsonl").read_text().count("lr_actor") == (part / "metrics.jsonl").read_text().count("lr_actor")


@pytest.mark.parametrize("flags, message", [
    (["--lr-schedule", "rewarm", "--lr-warmup-updates", 0], "--lr-warmup-updates 0"),
    (["--lr-schedule", "wsd", "--lr-decay-fraction", 1.5], "--lr-decay-fraction 1.5"),
    (["--actor-update-delay", -1], "--actor-update-delay -1"),
])
def test_bad_schedule_flags_name_the_flag(tmp_path, pretrained, capsys, flags, message):
    assert run_wsrl("finetune", "--checkpoint", pretrained, "--out", tmp_path / "ft", *flags, *TINY) == 2
    assert message in capsys.readouterr().err


if __name__ == "__main__":
    # Run with the old code first on the path: PYTHONPATH=<old checkout> python tests/test_schedule.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        metrics = tiny_runs(Path(tmp))
    BEFORE.write_text(json.dumps({"machine": machine(), "metrics": metrics}, indent=0) + "\n")
    print(f"wrote {len(metrics)} values to {BEFORE}", file=sys.stderr)


def test_pretraining_follows_its_schedule_per_gradient_step(tmp_path, hopper_file):
    out = tmp_path / "pre"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 40, "--out", out,
                    "--eval-every", 40, "--save-every", 40, "--batch-size", 32, "--lr-schedule", "wsd",
                    "--lr-warmup-updates", 0, "--lr-decay-fraction", 0.5, "--lr-schedule-on", "critic",
                    *TINY, "--log-every", 10) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    critic = {r["step"]: r["train/lr_critic"] for r in rows if "train/lr_critic" in r}
    actor = {r["step"]: r["train/lr_actor"] for r in rows if "train/lr_actor" in r}
    base = json.loads((out / "config.json").read_text())["agent"]
    # Step s is update s - 1; the last 20 of 40 decay to 0: step 30 is 10 of them in.
    assert critic == pytest.approx({10: base["critic_lr"], 20: base["critic_lr"], 30: base["critic_lr"] / 2, 40: 0.0})
    assert set(actor.values()) == {base["actor_lr"]}


def test_a_pretraining_checkpoint_does_not_depend_on_the_runs_length(tmp_path, hopper_file):
    """With the default constant learning rate, step k of a --steps N run is bit for bit the final
    checkpoint of a --steps k run: how the shipped CQL checkpoint (step 20k of a 30k run) is remade
    by `make demo PRETRAIN=1`."""
    from safetensors.torch import load_file

    flags = ["pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--algo", "cql", "--batch-size", "32",
             "--cql-n-actions", "2", "--eval-every", "10", "--save-every", "10", "--keep-checkpoints", "5", "--seed", "3",
             *TINY, "--threads", "1"]
    assert run_wsrl(*flags, "--steps", "20", "--out", tmp_path / "short") == 0
    assert run_wsrl(*flags, "--steps", "40", "--out", tmp_path / "long") == 0
    short = load_file(tmp_path / "short" / "checkpoints" / "step_000000020" / "model.safetensors")
    long = load_file(tmp_path / "long" / "checkpoints" / "step_000000020" / "model.safetensors")
    assert short.keys() == long.keys()
    for name in short:
        assert torch.equal(short[name], long[name]), name
