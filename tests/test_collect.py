"""`wsrl collect`: D4RL round trip, Minari output, atomic writes, policy sources, bad input."""

from __future__ import annotations

import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from wsrl.cli import main
from wsrl.collect import CollectConfig, collect
from wsrl.data.offline import read_d4rl_hdf5
from wsrl.errors import UserError


def _collect_random(out, **kw):
    cfg = CollectConfig(env="Hopper-v5", policy=("random",), steps=(300,), out=str(out), num_envs=3,
                        max_episode_steps=20, seed=3, **kw)
    return cfg, collect(cfg)


def _replay_episodes(cfg: CollectConfig) -> dict[str, np.ndarray]:
    """The same random rollout, recorded independently with plain Gymnasium envs."""
    import gymnasium as gym

    # Reproduce the vector env's seeding and the RandomActor's action stream.
    import torch

    venv = gym.vector.SyncVectorEnv([lambda: gym.make("Hopper-v5", max_episode_steps=20) for _ in range(3)])
    obs, _ = venv.reset(seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    per_env = [[] for _ in range(3)]
    episodes = []
    autoreset = np.zeros(3, dtype=bool)
    taken = 0
    while taken < 300:
        actions = (torch.rand((3, 3), generator=gen) * 2 - 1).numpy()
        nxt, rew, term, trunc, _ = venv.step(actions)
        for i in range(3):
            if autoreset[i] or taken >= 300:
                continue
            per_env[i].append((obs[i], actions[i], rew[i], nxt[i], term[i], trunc[i] and not term[i]))
            taken += 1
            if term[i] or trunc[i]:
                episodes.append(per_env[i])
                per_env[i] = []
        autoreset = term | trunc
        obs = nxt
    for rows in per_env:
        if rows:
            last = rows[-1]
            rows[-1] = (*last[:5], True)
            episodes.append(rows)
    cols = list(zip(*[row for ep in episodes for row in ep]))
    names = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
    return {k: np.asarray(v) for k, v in zip(names, cols)}


def test_d4rl_round_trip_keeps_transitions_terminals_and_timeouts(tmp_path):
    out = tmp_path / "random.hdf5"
    cfg, result = _collect_random(out)
    assert result["transitions"] == 300
    data = read_d4rl_hdf5(out)
    assert len(data) == 300
    # Episodes ended both ways: a true termination and a time-limit cut (plus cuts where collection stopped).
    assert data.terminals.sum() > 0
    assert data.timeouts.sum() > 3
    assert not (data.terminals & data.timeouts).any()

    expected = _replay_episodes(cfg)
    # Rows are grouped by episode, episodes in the order they ended (unfinished ones last).
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        got, want = getattr(data, key), expected[key]
        assert got.shape[0] == want.shape[0], key
        np.testing.assert_allclose(got, want.astype(got.dtype).reshape(got.shape), rtol=1e-6, atol=1e-6, err_msg=key)
    # Both kinds of episode end are there: terminations and time-limit cuts (not only end-of-collection cuts).
    assert int(expected["timeouts"].sum()) > 3 and int(data.terminals.sum()) > 0
    # Within an episode, each next observation is the following row's observation.
    cont = ~(data.terminals | data.timeouts)[:-1]
    np.testing.assert_array_equal(data.next_observations[:-1][cont], data.observations[1:][cont])

    with h5py.File(out) as f:
        assert f["infos/qpos"].shape == (300, 6) and f["infos/qvel"].shape == (300, 6)
        assert f["metadata/env_id"][()] == b"Hopper-v5"
        assert b'"random"' in f["metadata/sources"][()]
        assert f["metadata/num_transitions"][()] == 300
        # qpos[1:] of MuJoCo Hopper is the observation's first 5 entries (x position is excluded).
        np.testing.assert_allclose(f["infos/qpos"][:, 1:], f["observations"][:, :5], atol=1e-5)


def test_minari_output_loads_through_minari(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    d4rl_path = tmp_path / "same.hdf5"
    _collect_random(d4rl_path)
    cfg = CollectConfig(env="Hopper-v5", policy=("random",), steps=(300,), out="wsrl/hopper-test-v0",
                        format="minari", num_envs=3, max_episode_steps=20, seed=3)
    collect(cfg)
    dataset = minari.load_dataset("wsrl/hopper-test-v0")
    episodes = list(dataset.iterate_episodes())
    assert sum(len(ep.rewards) for ep in episodes) == 300
    ref = read_d4rl_hdf5(d4rl_path)
    obs = np.concatenate([ep.observations[:-1] for ep in episodes])
    np.testing.assert_allclose(obs, ref.observations, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([ep.terminations for ep in episodes]), ref.terminals)
    np.testing.assert_array_equal(np.concatenate([ep.truncations for ep in episodes]), ref.timeouts)
    # And through wsrl's own Minari reader.
    from wsrl.data.offline import read_minari

    again = read_minari("wsrl/hopper-test-v0", download=False)
    np.testing.assert_allclose(again.rewards, ref.rewards, rtol=1e-6)
    # No temporary build folder is left behind; an existing id is refused without --overwrite.
    assert not [p for p in (tmp_path / "minari").iterdir() if p.name.startswith(".wsrl-tmp")]
    with pytest.raises(UserError, match="exists"):
        collect(cfg)


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "crash.hdf5"
    real = h5py.File.create_dataset
    calls = {"n": 0}

    def failing(self, name, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # some columns are already written
            raise KeyboardInterrupt("simulated crash mid-write")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(KeyboardInterrupt):
        _collect_random(out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_collect_leaves_no_file_at_output(tmp_path):
    """SIGKILL during collection: the destination never appears (a temp file may, under a hidden name)."""
    out = tmp_path / "killed.hdf5"
    proc = subprocess.Popen([sys.executable, "-m", "wsrl.cli", "collect", "--env", "Hopper-v5", "--policy", "random",
                             "--steps", "10000000", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)
    proc.kill()
    proc.wait()
    assert not out.exists()


def test_overwrite_and_bad_input_are_refused_cleanly(tmp_path, capsys):
    out = tmp_path / "a.hdf5"
    out.write_text("not mine")
    assert main(["collect", "--env", "Hopper-v5", "--out", str(out), "--steps", "10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "not mine"
    for args, msg in [(["--policy", "no-such-policy"], "not a shipped policy"),
                      (["--policy", "random", "random", "--steps", "1", "2", "3"], "one count per"),
                      (["--steps", "0"], "must be positive"),
                      (["--out", str(tmp_path / "x.txt")], ".hdf5")]:
        argv = ["collect", "--env", "Hopper-v5", "--out", str(tmp_path / "b.hdf5"), *args]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5"]


def test_policy_from_checkpoint_mixture_and_replay_buffer(tmp_path):
    """A tiny fine-tuning run: its actor drives a collect, mixed with random; its buffer exports as replay data."""
    run = tmp_path / "run"
    assert main(["finetune", "--from-scratch", "--env", "Hopper-v5", "--out", str(run), "--steps", "300",
                 "--warmup-steps", "250", "--utd", "1", "--batch-size", "32", "--critic-hidden", "32", "32",
                 "--actor-hidden", "32", "32", "--ensemble-size", "2", "--eval-episodes", "1", "--device", "cpu"]) == 0
    out = tmp_path / "mix.hdf5"
    res = collect(CollectConfig(env="Hopper-v5", policy=(str(run), "random"), steps=(120, 80), out=str(out),
                                num_envs=2, noise_std=0.1, seed=1))
    assert res["transitions"] == 200
    with h5py.File(out) as f:
        meta = f["metadata/sources"][()].decode()
        assert '"checkpoint"' in meta and '"random"' in meta
    assert len(read_d4rl_hdf5(out)) == 200

    replay = tmp_path / "replay.hdf5"
    collect(CollectConfig(env="Hopper-v5", policy=(f"replay:{run}",), steps=(1000,), out=str(replay)))
    data = read_d4rl_hdf5(replay)
    assert len(data) == 300  # the whole buffer
    from wsrl.checkpoint import load_checkpoint

    _, _, state = load_checkpoint(run)
    np.testing.assert_allclose(data.observations, state["buffer"]["observations"].numpy())
    np.testing.assert_array_equal(data.terminals, state["buffer"]["masks"].numpy() == 0)
    ends = np.flatnonzero(data.terminals | data.timeouts)
    cont = np.ones(len(data) - 1, dtype=bool)
    cont[ends[ends < len(data) - 1]] = False
    np.testing.assert_array_equal(data.next_observations[:-1][cont], data.observations[1:][cont])

    with pytest.raises(UserError, match="trained on Hopper-v5"):
        collect(CollectConfig(env="Walker2d-v5", policy=(str(run),), steps=(10,), out=str(tmp_path / "w.hdf5")))


def test_cli_collect_help_lists_flags(capsys):
    with pytest.raises(SystemExit):
        main(["collect", "--help"])
    out = capsys.readouterr().out
    assert "--noise-std" in out and "--format" in out and "replay:RUN_DIR" in out
