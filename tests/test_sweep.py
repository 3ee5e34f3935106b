"""`wsrl sweep`: a real grid on Ray killed part-way and run again on a `ray start --head` cluster;
the run tree, shared pretraining and every bad sweep file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import random_rollouts, run_wsrl, write_d4rl
from wsrl.checkpoint import list_checkpoints, run_finished as finished
from wsrl.config import SweepConfig
from wsrl.errors import UserError
from wsrl.grid import load_sweep, plan_runs

# Usage stats off; token authentication on, which a driver joining a cluster must ask for. The token
# itself each test makes in its own folder (_ray_token): nothing comes from the home folder.
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    RAY_ENV.pop(name, None)
HEAD_START_SECONDS = 120


def _ray_token(folder: Path) -> dict:
    """RAY_ENV with a token of this test's own: `ray get-auth-token --generate` writes it into the
    home folder it is given, here ``folder``; head, drivers and workers read it from RAY_AUTH_TOKEN_PATH."""
    made = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"],
                          env={**RAY_ENV, "HOME": str(folder)}, capture_output=True, text=True, timeout=120)
    token = folder / ".ray" / "auth_token"
    assert made.returncode == 0 and token.is_file(), made.stdout + made.stderr
    return {**RAY_ENV, "RAY_AUTH_TOKEN_PATH": str(token)}


GRID = """
seeds = [0, 1]

[envs.pendulum]
env = "Pendulum-v1"
dataset = "pendulum.hdf5"

[envs.invpend]
env = "InvertedPendulum-v5"
dataset = "invpend.hdf5"

[envs.broken]  # not an HDF5 file: its pretraining runs fail, its fine-tuning runs are skipped
env = "Pendulum-v1"
dataset = "broken.hdf5"

[methods.wsrl]
finetune = { warmup-steps = 10 }

[methods.no-warmup]
recipe = "wsrl-no-warmup"

[pretrain]
steps = 20
save-every = 20
eval-every = 20
batch-size = 32
cql-n-actions = 2
critic-hidden = [16, 16]
actor-hidden = [16, 16]
ensemble-size = 2
eval-episodes = 2
log-every = 10

[finetune]
steps = 40
save-every = 20  # one checkpoint half-way: the window in which the test kills the sweep
eval-every = 40
batch-size = 32
utd = 2
eval-episodes = 2
log-every = 10
"""


def _grid(folder: Path) -> Path:
    write_d4rl(folder / "pendulum.hdf5", random_rollouts("Pendulum-v1", n=300))
    write_d4rl(folder / "invpend.hdf5", random_rollouts("InvertedPendulum-v5", n=300))
    (folder / "broken.hdf5").write_text("not hdf5")
    (folder / "grid.toml").write_text(GRID)
    return folder / "grid.toml"


@contextlib.contextmanager
def _ray_head(env: dict):
    """`ray start --head` on a free port with its own (short: socket paths) temp folder, up and
    answering before it is used; --block makes SIGTERM to it stop every process it started."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="wsrl-ray-", dir="/tmp")
    ray = str(Path(sys.executable).with_name("ray"))
    with open(Path(temp) / "head.log", "w+") as log:
        head = subprocess.Popen([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 f"--temp-dir={temp}", "--block"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + HEAD_START_SECONDS
            while True:
                # `ray status` answers once the head's GCS is up and accepts this token.
                up = subprocess.run([ray, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                                    timeout=HEAD_START_SECONDS)
                if up.returncode == 0:
                    break
                log.seek(0)
                assert head.poll() is None and time.monotonic() < deadline, \
                    f"`ray start --head` {'exited' if head.poll() is not None else 'is not up'}:\n{log.read()[-3000:]}"
                time.sleep(1)
            yield f"127.0.0.1:{port}"
        finally:
            head.terminate()
            head.wait(timeout=60)
            shutil.rmtree(temp, ignore_errors=True)


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid``: the driver, Ray's processes and workers, the runs."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if proc.name.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(proc.name))
    return pids


def _evals(run: Path, step: int) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] == step and "eval/return" in r]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the run processes die with their Ray worker on Linux only")
def test_sweep_killed_part_way_then_rerun_on_a_cluster_finishes_every_run_once(tmp_path):
    pytest.importorskip("ray")
    grid, out, env = _grid(tmp_path), tmp_path / "sweep", _ray_token(tmp_path)
    good = [f"{env}/{method}/seed{seed}" for env in ("pendulum", "invpend") for method in ("wsrl", "no-warmup") for seed in (0, 1)]
    pretrains = [f"{env}/_pretrain/wsrl/seed{seed}" for env in ("pendulum", "invpend") for seed in (0, 1)]
    with _ray_head(env) as address:
        # First pass on a local Ray of its own; SIGKILL every process of the driver's session (as a
        # crash would) as soon as a fine-tuning run has a checkpoint but is not finished.
        cmd = [sys.executable, "-m", "wsrl.cli", "sweep", str(grid), "--out", str(out)]
        with open(tmp_path / "pass1.log", "w") as log:
            driver = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            deadline, killed = time.monotonic() + 300, False
            while driver.poll() is None and time.monotonic() < deadline:
                if any(list_checkpoints(out / run) and not finished(out / run) for run in good):
                    for pid in _session(driver.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.02)
            driver.wait()
        assert killed, (tmp_path / "pass1.log").read_text()[-3000:]
        for _ in range(100):
            if not _session(driver.pid):
                break
            time.sleep(0.1)
        assert not _session(driver.pid)
        runs = good + pretrains
        done_before = {run: list_checkpoints(out / run)[-1].stat().st_mtime_ns for run in runs if finished(out / run)}
        logs = {run: (out / "_sweep/logs" / f"{run}.log").read_text() for run in runs if (out / "_sweep/logs" / f"{run}.log").exists()}
        assert len(done_before) < len(runs)

        # Without the cluster's token: one line, exit 2, the tree as it was.
        (tmp_path / "home").mkdir()
        plan = (out / "_sweep/plan.json").read_text()
        refused = subprocess.run([*cmd, "--address", address], env={**RAY_ENV, "HOME": str(tmp_path / "home")},
                                 cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"--address {address}: cannot join" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr
        assert (out / "_sweep/plan.json").read_text() == plan
        second = subprocess.run([*cmd, "--address", address], env=env, cwd=tmp_path, capture_output=True, text=True,
                                timeout=600)
    assert second.returncode == 1, second.stdout + second.stderr  # the broken env's runs
    assert f"Ray at {address}" in second.stdout

    status = json.loads((out / "_sweep/status.json").read_text())
    events = [json.loads(line) for line in (out / "_sweep/events.jsonl").read_text().splitlines()]
    for run in runs:
        assert status[run]["status"] == "finished" and finished(out / run), run
        log = (out / "_sweep/logs" / f"{run}.log").read_text()
        if run in done_before:  # not started again
            assert list_checkpoints(out / run)[-1].stat().st_mtime_ns == done_before[run] and log == logs[run]
        else:  # finished by the second pass, once
            assert sum(e["run"] == run and e["event"] == "finished" and not e.get("earlier") for e in events) == 1
        steps = 20 if "_pretrain" in run else 40
        assert len(_evals(out / run, steps)) == 1, run  # a resumed run's log holds each step once
    assert any("--resume" in (out / "_sweep/logs" / f"{run}.log").read_text() for run in good)

    # One pretraining run per env and seed, shared by both methods: same folder, same weights.
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/_pretrain/*/seed*")) == sorted(
        pretrains + ["broken/_pretrain/wsrl/seed0", "broken/_pretrain/wsrl/seed1"])
    for env in ("pendulum", "invpend"):
        for seed in (0, 1):
            starts = []
            for method in ("wsrl", "no-warmup"):
                run = out / env / method / f"seed{seed}"
                assert json.loads((run / "config.json").read_text())["checkpoint"] == str(out / env / "_pretrain/wsrl" / f"seed{seed}")
                starts.append(_evals(run, 0)[0]["eval/return"])
            assert starts[0] == starts[1]  # the pretrained policy, evaluated on the same episodes

    for seed in (0, 1):
        failed = out / "broken/_pretrain/wsrl" / f"seed{seed}"
        assert status[str(failed.relative_to(out))]["status"] == "failed"
        assert "not a readable HDF5" in (failed / "error.txt").read_text()
        for method in ("wsrl", "no-warmup"):
            assert status[f"broken/{method}/seed{seed}"] == {"status": "skipped", "error": f"its pretraining run "
                                                             f"broken/_pretrain/wsrl/seed{seed} failed"}
    assert "failed broken/_pretrain/wsrl/seed0: wsrl pretrain: error:" in second.stdout


def _plan(tmp_path, text: str, name: str = "s.toml", **flags) -> dict:
    (tmp_path / name).write_text(text)
    return {run.path: run for run in plan_runs(load_sweep(SweepConfig(file=str(tmp_path / name), out="x", **flags)))}


def test_run_tree_shares_pretraining_only_between_methods_that_pretrain_the_same_way(tmp_path):
    write_d4rl(tmp_path / "d.hdf5", random_rollouts("Pendulum-v1", n=50))
    plan = _plan(tmp_path, """
seeds = [3]
envs = { pend = { env = "Pendulum-v1", dataset = "d.hdf5", finetune = { eval-every = 7 } } }
pretrain = { steps = 5 }
[methods]
wsrl = {}
no-warmup = { recipe = "wsrl-no-warmup", finetune = { utd = 2 } }
bc = { recipe = "wsrl", pretrain = { bc-steps = 2 } }
cql = { recipe = "cql-finetune" }
rlpd = {}
""")
    data = str(tmp_path / "d.hdf5")
    shared, bc = "pend/_pretrain/wsrl/seed3", [p for p in plan if p.startswith("pend/_pretrain/wsrl-")]
    assert sorted(plan) == sorted([shared, *bc, "pend/_pretrain/cql-finetune/seed3", "pend/wsrl/seed3",
                                   "pend/no-warmup/seed3", "pend/bc/seed3", "pend/cql/seed3", "pend/rlpd/seed3"])
    assert plan["pend/wsrl/seed3"].after == plan["pend/no-warmup/seed3"].after == shared
    assert plan["pend/bc/seed3"].after == bc[0] and plan["pend/cql/seed3"].after == "pend/_pretrain/cql-finetune/seed3"
    assert plan[shared].args == ("pretrain", "--recipe", "wsrl", "--env", "Pendulum-v1", "--seed", "3", "--dataset", data,
                                 "--steps", "5")
    assert plan[bc[0]].args[-4:] == ("--steps", "5", "--bc-steps", "2")
    assert plan["pend/no-warmup/seed3"].args == ("finetune", "--recipe", "wsrl-no-warmup", "--env", "Pendulum-v1",
                                                 "--seed", "3", "--eval-every", "7", "--utd", "2")
    rlpd = plan["pend/rlpd/seed3"]
    assert rlpd.after == "" and rlpd.args[:8] == ("finetune", "--recipe", "rlpd", "--env", "Pendulum-v1", "--seed", "3",
                                                  "--dataset") and rlpd.args[8] == data
    # YAML says the same; the command line narrows the grid and adds flags.
    yaml_plan = _plan(tmp_path, """
seeds: [3]
envs: {pend: {env: Pendulum-v1, dataset: d.hdf5, finetune: {eval-every: 7}}}
pretrain: {steps: 5}
methods: {wsrl: {}, no-warmup: {recipe: wsrl-no-warmup, finetune: {utd: 2}}, bc: {recipe: wsrl, pretrain: {bc-steps: 2}},
          cql: {recipe: cql-finetune}, rlpd: {}}
""", "s.yaml")
    assert yaml_plan == plan
    narrow = _plan(tmp_path, (tmp_path / "s.toml").read_text(), methods=("no-warmup", "wsrl-retain"), seeds=(0, 1),
                   finetune_flags="--steps 9 --no-cuda-graph")
    assert sorted(narrow) == ["pend/_pretrain/wsrl/seed0", "pend/_pretrain/wsrl/seed1", "pend/no-warmup/seed0",
                              "pend/no-warmup/seed1", "pend/wsrl-retain/seed0", "pend/wsrl-retain/seed1"]
    assert narrow["pend/wsrl-retain/seed1"].args[-7:] == ("--dataset", data, "--steps", "9", "--no-cuda-graph",
                                                          "--eval-every", "7")  # retention reads the offline data
    assert "--dataset" not in narrow["pend/no-warmup/seed1"].args
    d4rl = _plan(tmp_path, 'seeds = [0]\nenvs = ["hopper-medium-v2"]\nmethods = ["wsrl-append"]\n')  # its own dataset
    assert all(run.args[7:9] == ("--dataset", "hopper-medium-v2") for run in d4rl.values()), d4rl


def test_envs_on_the_command_line_need_no_dataset_the_file_names_for_them(tmp_path):
    write_d4rl(tmp_path / "local.hdf5", random_rollouts("Pendulum-v1", n=50))
    text = """
seeds = [0]
methods = ["rlpd"]
envs = { pend = { env = "Pendulum-v1", dataset = "elsewhere/pend.hdf5" }, other = { env = "Pendulum-v1", dataset = "gone.hdf5" } }
"""
    with pytest.raises(UserError, match="envs.other.dataset: no such file"):
        _plan(tmp_path, text, envs=("pend=local.hdf5", "other"))
    plan = _plan(tmp_path, text, envs=(f"pend={tmp_path / 'local.hdf5'}",))  # replaced, and other left out
    assert list(plan) == ["pend/rlpd/seed0"] and plan["pend/rlpd/seed0"].args[7:9] == ("--dataset", str(tmp_path / "local.hdf5"))


ENV = '[envs.pend]\nenv = "Pendulum-v1"\n'
OK = "seeds = [0]\n" + ENV + "[methods.wsrl]\n"
BAD = {
    "unknown recipe 'wsrll'": OK + '[methods.a]\nrecipe = "wsrll"\n',
    "--seed is set by the sweep itself": "seeds = [0]\n" + ENV + "[methods.wsrl]\nfinetune = { seed = 3 }\n",
    "Unrecognized options: --warmup-step, 10 (perhaps --warmup-steps)": OK + "[finetune]\nwarmup-step = 10\n",
    "finetune: Error parsing --utd": OK + '[finetune]\nutd = "x"\n',
    "unknown key 'method'": OK + "[method.wsrl]\n",
    "'_x' cannot name a folder": OK + '[methods._x]\nrecipe = "wsrl"\n',
    "recipe rlpd has no pretraining": OK + "[methods.rlpd]\npretrain = { steps = 3 }\n",
    "envs.bad: --env: cannot make 'NoSuchEnv-v0'": OK + '[envs.bad]\nenv = "NoSuchEnv-v0"\n',
    "envs.bad.dataset: no such file": OK + '[envs.bad]\nenv = "Pendulum-v1"\ndataset = "missing.hdf5"\n',
    "a seed is listed twice": "seeds = [1, 1]\n" + ENV + "[methods.wsrl]\n",
    "not valid TOML": OK + "seeds = [\n",
}


def test_every_bad_sweep_file_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    file, out = tmp_path / "bad.toml", tmp_path / "out"
    for expected, text in BAD.items():
        file.write_text(text)
        capsys.readouterr()
        assert run_wsrl("sweep", file, "--out", out) == 2, expected
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, (expected, err)
        assert not out.exists()
    assert run_wsrl("sweep", "--out", out, "--envs", "Pendulum-v1") == 2
    assert "no methods (give them in the sweep file or with --methods)" in capsys.readouterr().err


def test_rerun_with_other_flags_for_a_started_run_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "_sweep").mkdir(parents=True)
    (out / "_sweep/plan.json").write_text(json.dumps({"Pendulum-v1/_pretrain/wsrl/seed0": {
        "kind": "pretrain", "args": ["pretrain", "--recipe", "wsrl", "--env", "Pendulum-v1", "--seed", "0", "--steps", "5"],
        "after": ""}}))
    args = ["sweep", "--out", out, "--envs", "Pendulum-v1", "--methods", "wsrl", "--seeds", "0", "--dry-run"]
    assert run_wsrl(*args, "--pretrain-flags=--steps 6") == 2
    assert "Pendulum-v1/_pretrain/wsrl/seed0 was started as `wsrl pretrain --recipe wsrl --env Pendulum-v1 --seed 0 " \
           "--steps 5`" in capsys.readouterr().err
    assert run_wsrl(*args, "--pretrain-flags=--steps 5") == 0
    assert "Pendulum-v1/wsrl/seed0: wsrl finetune --recipe wsrl" in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    with pytest.raises(UserError, match="holds files that are not a wsrl sweep"):
        from wsrl.sweep import sweep

        sweep(SweepConfig(out=str(other), envs=("Pendulum-v1",), methods=("wsrl",), seeds=(0,)))


@pytest.mark.slow
def test_sweep_address_where_no_cluster_answers_is_one_line_exit_2_in_bounded_time(tmp_path):
    pytest.importorskip("ray")
    out, env = tmp_path / "out", _ray_token(tmp_path)  # with a token, so that Ray does try to talk to the address
    cmd = [sys.executable, "-m", "wsrl.cli", "sweep", "--envs", "Pendulum-v1", "--methods", "wsrl", "--seeds", "0",
           "--out", str(out), "--address"]
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        nothing = f"127.0.0.1:{s.getsockname()[1]}"
    with socket.socket() as silent:  # accepts connections, never speaks Ray's protocol
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = f"127.0.0.1:{silent.getsockname()[1]}"
        for address, flags, expected in [
                (nothing, [], f"--address {nothing}: nothing is listening there"),
                (mute, ["--connect-timeout", "5"], f"--address {mute}: no Ray cluster answered within 5 s "
                                                   f"(--connect-timeout); is it a Ray head")]:
            start = time.monotonic()
            done = subprocess.run([*cmd, address, *flags], env=env, capture_output=True, text=True, timeout=90)
            assert done.returncode == 2 and time.monotonic() - start < 90, done.stdout + done.stderr
            err = done.stderr.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"wsrl sweep: error: {expected}"), done.stderr
            assert "RAY_AUTH_MODE=token" in err[0] or "nothing is listening" in err[0]
            assert not out.exists()


def test_only_plain_host_port_addresses_are_probed_before_ray():
    from wsrl.sweep import tcp_address

    assert tcp_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert tcp_address("[::1]:6379") == ("::1", 6379)  # IPv6, without its brackets
    assert tcp_address("ray://head:10001") is None  # a Ray client address: only Ray can try it
    assert tcp_address("auto") is None and tcp_address("head") is None
