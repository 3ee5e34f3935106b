"""Checkpoints: save -> load gives identical actions and Q-values; damaged or foreign files are refused."""

import json
import pickle

import pytest
import torch

from wsrl.checkpoint import FORMAT_VERSION, load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint
from wsrl.config import AgentConfig, NetConfig
from wsrl.agents import CQL
from wsrl.errors import UserError
from wsrl.nets import ActorCritic

NET = NetConfig(critic_hidden=(16, 16), actor_hidden=(16,), ensemble_size=3)


def _trained_agent():
    torch.manual_seed(0)
    agent = CQL(ActorCritic(4, 2, NET, 1.0, 5.0), AgentConfig(cql_n_actions=2), NET)
    batch = {"observations": torch.randn(1, 8, 4), "actions": torch.rand(1, 8, 2) * 2 - 1, "rewards": torch.randn(1, 8),
             "next_observations": torch.randn(1, 8, 4), "masks": torch.ones(1, 8), "mc_returns": torch.zeros(1, 8)}
    for _ in range(3):
        agent.update(batch)
    return agent


def _save(agent, run_dir, step=3):
    state = {"optimizers": {k: optimizer_state(o) for k, o in agent.optimizers.items()}, "rng": {"torch": torch.get_rng_state()}}
    return save_checkpoint(run_dir, step, {"kind": "pretrain", "env_id": "Hopper-v5"}, agent.model.state_dict(), state, keep=2)


def test_round_trip_gives_identical_actions_q_values_and_optimizer_state(tmp_path):
    agent = _trained_agent()
    _save(agent, tmp_path)
    meta, model_state, state = load_checkpoint(tmp_path)
    assert meta["step"] == 3 and meta["format_version"] == FORMAT_VERSION
    fresh = CQL(ActorCritic(4, 2, NET, 1.0, 5.0), AgentConfig(cql_n_actions=2), NET)
    fresh.model.load_state_dict(model_state)
    for name, opt in fresh.optimizers.items():
        load_optimizer_state(opt, state["optimizers"][name])
    obs, act = torch.randn(5, 4), torch.rand(5, 2)
    assert torch.equal(fresh.model.actor.act(obs, deterministic=True), agent.model.actor.act(obs, deterministic=True))
    assert torch.equal(fresh.model.critic(obs, act), agent.model.critic(obs, act))
    torch.manual_seed(7)
    sampled = fresh.model.actor.act(obs, deterministic=False)
    torch.manual_seed(7)
    assert torch.equal(sampled, agent.model.actor.act(obs, deterministic=False))
    for name, opt in agent.optimizers.items():
        for p_ref, p_new in zip(opt.param_groups[0]["params"], fresh.optimizers[name].param_groups[0]["params"]):
            for key, value in opt.state[p_ref].items():
                assert torch.equal(value, fresh.optimizers[name].state[p_new][key])


def test_keeps_only_newest_checkpoints(tmp_path):
    agent = _trained_agent()
    for step in (1, 2, 3):
        _save(agent, tmp_path, step)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000002", "step_000000003"]
    assert load_checkpoint(tmp_path)[0]["step"] == 3


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_damaged_file_is_refused_by_name(tmp_path, damage):
    ckpt = _save(_trained_agent(), tmp_path)
    target = ckpt / "model.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "alter":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        target.unlink()
    with pytest.raises(UserError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_newer_format_is_refused_politely(tmp_path):
    ckpt = _save(_trained_agent(), tmp_path)
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="newer than this wsrl reads"):
        load_checkpoint(tmp_path)


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/wsrl_pickle_payload_ran", "w"))


def test_pickle_payload_is_refused_without_running(tmp_path):
    """A torch.save/pickle file dropped in place of the weights (with a forged manifest) is never unpickled."""
    import hashlib
    import os

    ckpt = _save(_trained_agent(), tmp_path)
    payload = pickle.dumps({"actor": _Boom()})
    (ckpt / "model.safetensors").write_bytes(payload)
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["files"]["model.safetensors"] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    if os.path.exists("/tmp/wsrl_pickle_payload_ran"):
        os.remove("/tmp/wsrl_pickle_payload_ran")
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(tmp_path)
    assert not os.path.exists("/tmp/wsrl_pickle_payload_ran")


def test_temporary_folder_from_a_crash_is_ignored(tmp_path):
    _save(_trained_agent(), tmp_path, step=3)
    (tmp_path / "checkpoints" / ".tmp_step_000000004_123").mkdir()
    assert load_checkpoint(tmp_path)[0]["step"] == 3
