"""Policy sources (shipped, folders, checkpoints) and `wsrl export`: files that act like wsrl's actor."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import run_wsrl
from wsrl.specs import resolve_env
from wsrl.policies import TrainedPolicy, export_metadata, load_policy, read_policy, shipped_policies, shipped_policy_info


@pytest.mark.parametrize("name", shipped_policies())
def test_shipped_policies_load_and_act(name):
    folder = resources.files("wsrl") / "policies" / name
    info = shipped_policy_info(name)
    assert {"env_id", "net", "obs_dim", "act_dim", "measured_return", "command"} <= set(info)
    assert (folder / "actor.safetensors").stat().st_size < 1_000_000
    spec = resolve_env(info["env_id"])
    actor, desc = load_policy(name, spec, info["obs_dim"], info["act_dim"], torch.device("cpu"))
    a = actor.act(torch.zeros(4, info["obs_dim"]), True)
    assert a.shape == (4, info["act_dim"]) and torch.all(a.abs() <= 1) and desc["kind"] == "shipped"


def _actions(actor, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return actor.act(torch.from_numpy(obs), deterministic=True).numpy()


@pytest.fixture(scope="module")
def observations():
    return np.random.default_rng(0).normal(0.0, 3.0, (1000, 11)).astype(np.float32)


def test_onnx_export_acts_like_the_actor(pretrained, tmp_path, observations):
    ort = pytest.importorskip("onnxruntime", reason="the ONNX export is checked with the 'export' extra")
    import onnx

    out = tmp_path / "policy.onnx"
    assert run_wsrl("export", pretrained, "--format", "onnx", "--out", out) == 0
    session = ort.InferenceSession(str(out))
    actions = session.run(None, {"observations": observations})[0]
    expected = _actions(read_policy(str(pretrained), "test").actor(torch.device("cpu"), "test"), observations)
    np.testing.assert_allclose(actions, expected, atol=1e-5, rtol=0)
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["wsrl"])
    assert (meta["obs_dim"], meta["act_dim"], meta["env_id"], meta["env"]) == (11, 3, "Hopper-v5", "Hopper-v5")
    assert meta["action_scaling"]["low"] == [-1.0] * 3 and meta["action_scaling"]["high"] == [1.0] * 3
    assert meta["obs_keys"] is None and meta["source"]["step"] == 60
    assert meta["actor_kind"] == "tanh-squashed Gaussian, state-dependent std"


def test_pt2_export_acts_like_the_actor_without_wsrl(pretrained, tmp_path, observations):
    out = tmp_path / "policy.pt2"
    assert run_wsrl("export", pretrained, "--format", "pt2", "--out", out) == 0
    extra = {"wsrl.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    with torch.no_grad():
        actions = program.module()(torch.from_numpy(observations)).numpy()
    expected = _actions(read_policy(str(pretrained), "test").actor(torch.device("cpu"), "test"), observations)
    np.testing.assert_allclose(actions, expected, atol=1e-5, rtol=0)
    assert json.loads(extra["wsrl.json"])["act_dim"] == 3


def test_policy_folder_export_loads_as_a_policy_source(pretrained, tmp_path):
    out = tmp_path / "my-policy"
    assert run_wsrl("export", pretrained, "--format", "policy", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["actor.safetensors", "policy.json"]
    spec = resolve_env("Hopper-v5")
    actor, desc = load_policy(str(out), spec, 11, 3, torch.device("cpu"))
    original, _ = load_policy(str(pretrained), spec, 11, 3, torch.device("cpu"))
    obs = np.ones((5, 11), np.float32)
    np.testing.assert_array_equal(_actions(actor, obs), _actions(original, obs))


def test_export_metadata_records_the_dict_observation_order_and_action_bounds():
    class DictObs(gym.Env):
        observation_space = gym.spaces.Dict({"observation": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
                                             "desired_goal": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})
        action_space = gym.spaces.Box(-2.0, 3.0, (1,), np.float32)

    gym.register("WsrlTestDictObs-v0", entry_point=DictObs)
    policy = TrainedPolicy("WsrlTestDictObs-v0", "WsrlTestDictObs-v0", 6, 1, {}, {}, {}, {})
    meta = export_metadata(policy)
    assert meta["obs_keys"] == [["desired_goal", 2], ["observation", 4]]  # sorted, as wsrl.domains.sorted_layout
    assert meta["action_scaling"]["low"] == [-2.0] and meta["action_scaling"]["high"] == [3.0]


def test_export_bad_input(pretrained, tmp_path, capsys):
    assert run_wsrl("export", pretrained, "--format", "onnx", "--out", tmp_path / "p.pt2") == 2
    assert "should end in .onnx" in capsys.readouterr().err
    assert run_wsrl("export", pretrained, "--format", "tflite", "--out", tmp_path / "p") == 2
    assert "--format" in capsys.readouterr().err
    (tmp_path / "old.pt2").write_text("x")
    assert run_wsrl("export", pretrained, "--format", "pt2", "--out", tmp_path / "old.pt2") == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "old.pt2").read_text() == "x"
    assert run_wsrl("export", tmp_path / "nothing", "--out", tmp_path / "n.onnx") == 2
    assert "not a shipped policy" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt2"]


def test_the_shipped_cql_checkpoint_loads_for_fine_tuning(tmp_path):
    from wsrl.checkpoint import load_checkpoint
    from wsrl.cli import parse_finetune

    folder = resources.files("wsrl") / "pretrained" / "hopper-medium-cql"
    record = json.loads((folder / "pretrained.json").read_text())
    assert {"command", "wsrl_commit", "chosen_by", "dataset", "behaviour_same_protocol", "measured"} <= set(record)
    size = sum(p.stat().st_size for p in Path(str(folder)).rglob("*") if p.is_file())
    assert size < 3_000_000
    meta, weights, _ = load_checkpoint(str(folder))
    assert meta["kind"] == "pretrain" and meta["algo"] == "cql" and meta["env_id"] == "Hopper-v5"
    assert meta["step"] == record["measured"]["step"]
    cfg = parse_finetune(["--checkpoint", str(folder), "--out", str(tmp_path / "run")])
    assert cfg.env == "Hopper-v5" and cfg.net.critic_hidden == (128, 128) and cfg.net.ensemble_size == 4
    # The offline curve `wsrl plot` puts before the online one, ending at the shipped checkpoint.
    offline_steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(offline_steps) == meta["step"]


def test_export_follows_the_actor_variant(tmp_path, observations):
    """A plain Gaussian with a state-independent std (the release's IQL actor) exports its own
    deterministic action: the clipped mean, not a tanh."""
    ort = pytest.importorskip("onnxruntime", reason="the ONNX export is checked with the 'export' extra")
    from safetensors.torch import save_file

    from wsrl.config import NetConfig
    from wsrl.nets import Actor
    from wsrl.policies import export_policy

    net = {"actor_hidden": [16], "actor_tanh": False, "actor_std": "uniform"}
    actor = Actor(11, 3, NetConfig(actor_hidden=(16,), actor_tanh=False, actor_std="uniform", actor_final_scale=None))
    folder = tmp_path / "iql-like"
    folder.mkdir()
    save_file(actor.state_dict(), folder / "actor.safetensors")
    (folder / "policy.json").write_text(json.dumps({"env_id": "Hopper-v5", "obs_dim": 11, "act_dim": 3, "net": net}))
    expected = _actions(actor.eval(), observations)
    assert np.abs(expected).max() == 1.0  # some actions clipped: a tanh would never reach 1
    _, meta = export_policy(str(folder), tmp_path / "p.onnx", "onnx")
    assert meta["actor_kind"] == "Gaussian, actions clipped to [-1, 1], state-independent std"
    onnx_actions = ort.InferenceSession(str(tmp_path / "p.onnx")).run(None, {"observations": observations})[0]
    np.testing.assert_allclose(onnx_actions, expected, atol=1e-5, rtol=0)
    export_policy(str(folder), tmp_path / "p.pt2", "pt2")
    with torch.no_grad():
        pt2_actions = torch.export.load(str(tmp_path / "p.pt2")).module()(torch.from_numpy(observations)).numpy()
    np.testing.assert_allclose(pt2_actions, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("env", ["Hopper-v5", "antmaze-umaze-v2", "door-human-v1", "kitchen-mixed-v0"])
def test_export_layout_is_the_domains_flattening(env, tmp_path):
    """The exported file's input is the domain's flat observation, and its metadata says what that
    holds: AntMaze leaves its fixed goal out (29 numbers, not the 31 of the dict), kitchen keeps
    D4RL's 60 of Gymnasium-Robotics' state. A dict observation rebuilt from the layout's keys is
    the env's flat observation."""
    ort = pytest.importorskip("onnxruntime", reason="the ONNX export is checked with the 'export' extra")
    pytest.importorskip("gymnasium_robotics")
    from safetensors.torch import save_file

    from wsrl.config import NetConfig
    from wsrl.domains import domain_of
    from wsrl.envs import env_dims, make_env
    from wsrl.nets import Actor
    from wsrl.policies import export_policy

    spec = resolve_env(env)
    wrapped = make_env(spec)
    obs_dim, act_dim = env_dims(wrapped)
    folder = tmp_path / "policy"
    folder.mkdir()
    save_file(Actor(obs_dim, act_dim, NetConfig(actor_hidden=(8,))).state_dict(), folder / "actor.safetensors")
    (folder / "policy.json").write_text(json.dumps({"env": env, "env_id": spec.id, "obs_dim": obs_dim, "act_dim": act_dim,
                                                    "net": {"actor_hidden": [8]}}))
    path, meta = export_policy(str(folder), tmp_path / "p.onnx", "onnx")
    (width,) = ort.InferenceSession(str(path)).get_inputs()[0].shape[1:]
    layout = meta["obs_keys"]
    raw_space = wrapped.unwrapped.observation_space
    if not isinstance(raw_space, gym.spaces.Dict):
        assert layout is None and width == obs_dim
        return
    assert width == obs_dim == sum(size for _, size in layout)
    raw = wrapped.unwrapped.observation_space.sample()
    flat = domain_of(spec).flatten(raw)
    if all("[" not in source and "(" not in source for source, _ in layout):  # plain keys: rebuild the input from them
        def value(source):
            node = raw
            for key in source.split("/"):
                node = node[key]
            return np.asarray(node, dtype=np.float32).reshape(-1)

        np.testing.assert_array_equal(np.concatenate([value(source) for source, _ in layout]), flat)
    wrapped.close()
