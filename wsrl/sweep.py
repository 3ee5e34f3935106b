"""`wsrl sweep`: the runs of a grid (``wsrl.grid``) as Ray tasks that run the real CLI (docs/design.md, "Sweeps and reports").

Each run is ``python -m wsrl.cli pretrain|finetune ...``, exactly what a user could type, under the
sweep's ``--out`` (the run tree of ``wsrl.grid``); ``DIR/_sweep/`` holds ``plan.json`` (each run's
flags), ``events.jsonl`` (every start and end), ``status.json`` (each run's latest state),
``logs/`` (each run's console output) and ``locks/``.

A run is finished when its newest checkpoint is at its ``--steps``; running the sweep again skips
finished runs, resumes the others from their checkpoints (``--resume``) and starts the rest. A
failed run leaves ``error.txt`` in its folder, the fine-tuning runs of a failed pretraining run are
skipped, and everything else goes on.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from wsrl.atomic import atomic_write
from wsrl.checkpoint import list_checkpoints, run_finished as finished
from wsrl.config import SweepConfig
from wsrl.errors import UserError
from wsrl.grid import Run, load_sweep, plan_runs


def command(run: Run, root: Path, resume: bool, threads: int, device: str) -> list[str]:
    """``wsrl`` arguments of ``run``: a fresh start (replacing what a start that never reached a
    checkpoint left), or ``--resume`` from its newest checkpoint with the config saved there."""
    out = str(root / run.path)
    resources = ["--threads", str(threads), "--device", device]
    if resume:
        return [run.kind, "--resume", out, *resources]
    checkpoint = ["--checkpoint", str(root / run.after)] if run.after else []
    return [*run.args, *checkpoint, "--out", out, "--overwrite", *resources]


def _die_with_parent(parent: int) -> None:
    """In the run's process before it execs: SIGKILL it when the Ray worker that started it dies
    (Linux; a killed sweep then leaves no run writing into the tree)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


def _error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "stopped" in line]
    return (errors or lines or ["no output"])[-1]


def execute(run: Run, root: Path, cwd: str, threads: int, device: str) -> dict:
    """One run, on a Ray worker: start, resume or (if another sweep finished it) skip it."""
    run_dir, state = root / run.path, root / "_sweep"
    lock_path = state / "locks" / f"{run.path}.lock"
    log_path = state / "logs" / f"{run.path}.log"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        # The run's process inherits the lock, so a run left over from a killed sweep ends before
        # this one touches its folder.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if finished(run_dir):
            return {"status": "finished", "earlier": True}
        resume = bool(list_checkpoints(run_dir))
        (run_dir / "error.txt").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "wsrl.cli", *command(run, root, resume, threads, device)]
        start = time.monotonic()
        with open(log_path, "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            offset = log.tell()
            parent = os.getpid()
            code = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, pass_fds=(lock.fileno(),),
                                  preexec_fn=(lambda: _die_with_parent(parent)) if sys.platform == "linux" else None).returncode
        seconds = round(time.monotonic() - start, 1)
        if code == 0 and finished(run_dir):
            return {"status": "finished", "resumed": resume, "seconds": seconds}
        with open(log_path) as log:
            log.seek(offset)
            output = log.read()
        error = _error_line(output) if code else "exited 0 without a checkpoint at its --steps"
        write_error(run_dir, f"$ {shlex.join(cmd)}\nexit status {code} after {seconds} s; full log: {log_path}\n\n"
                             + "\n".join(output.splitlines()[-40:]) + "\n")
        return {"status": "failed", "error": error, "exit_status": code, "resumed": resume, "seconds": seconds}


def write_error(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "error.txt", lambda tmp: tmp.write_text(text))


class Ledger:
    """Each run's state (pending, running, finished, failed, skipped), kept in
    ``_sweep/status.json``, every change appended to ``_sweep/events.jsonl`` and shown as one line
    with the grid's counts."""

    def __init__(self, root: Path, runs: list[Run]):
        self.root, self.state = root, root / "_sweep"
        self.status = {run.path: {"status": "pending"} for run in runs}

    def __getitem__(self, path: str) -> str:
        return self.status[path]["status"]

    def set(self, path: str, status: str, announce: bool = True, **info) -> None:
        self.status[path] = {"status": status, **info}
        with open(self.state / "events.jsonl", "a") as f:
            f.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": path,
                                "event": status, **info}) + "\n")
        atomic_write(self.state / "status.json", lambda tmp: tmp.write_text(json.dumps(self.status, indent=1)))
        if announce:
            self.announce(f"{path}: " + {
                "finished": "finished by another sweep" if info.get("earlier") else
                f"finished in {info.get('seconds')} s" + (" (resumed)" if info.get("resumed") else ""),
                "running": "started", "failed": f"FAILED: {info.get('error')}", "skipped": f"skipped: {info.get('error')}",
            }.get(status, status))

    def announce(self, what: str) -> None:
        counts = {s: sum(v["status"] == s for v in self.status.values())
                  for s in ("finished", "running", "failed", "skipped", "pending")}
        print(f"[{counts['finished']} done, {counts['running']} running, {counts['failed']} failed, "
              f"{counts['skipped']} skipped, {counts['pending']} pending / {len(self.status)}] {what}", flush=True)


def _check_tree(root: Path, runs: list[Run]) -> dict:
    """The plan saved by an earlier start of this sweep, refusing to continue a run with other flags."""
    plan_file = root / "_sweep" / "plan.json"
    if not plan_file.is_file():
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise UserError(f"--out {root}: holds files that are not a wsrl sweep; give a new or empty folder")
        return {}
    saved = json.loads(plan_file.read_text())
    for run in runs:
        old = saved.get(run.path)
        if old is not None and (tuple(old["args"]), old["after"]) != (run.args, run.after):
            raise UserError(f"--out {root}: {run.path} was started as `wsrl {shlex.join(old['args'])}`, the sweep now "
                            f"asks for `wsrl {shlex.join(run.args)}`; use another --out, or delete {root / run.path} to redo it")
    return saved


JOIN_AND_LEAVE = ("import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR'); "
                  "ray.shutdown()")


def tcp_address(address: str) -> tuple[str, int] | None:
    """The host and port of a HOST:PORT or [IPv6]:PORT address, which a plain connection can probe;
    None for ``auto`` or a client address (``ray://HOST:PORT``), which only Ray can try."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None
    return host.strip("[]"), int(port)


def _connect(ray, cfg: SweepConfig) -> None:
    if not cfg.address:
        # A Ray of its own (not one a `ray start` left on this machine), quiet: its dashboard
        # would be a second progress view nobody asked for, its notices are about clusters.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        return
    where = f"--address {cfg.address}"
    probe = tcp_address(cfg.address)
    if probe is not None:  # a refused connection needs no Ray to diagnose
        try:
            socket.create_connection(probe, timeout=min(cfg.connect_timeout, 10.0)).close()
        except OSError as e:
            raise UserError(f"{where}: nothing is listening there ({e.strerror or e}); is `ray start --head` "
                            f"running there, on that port?") from None
    # Ray retries an unanswered cluster forever, in its C++ core where no signal reaches it, and
    # prints a notice every few seconds: a process of its own tries to join first, within the
    # timeout and with its output kept, and the sweep joins once that worked.
    hint = ("is it a Ray head (`ray start --head`), and with token authentication are RAY_AUTH_MODE=token and the "
            "cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) set here (docs/sweep.md)?")
    try:
        trial = subprocess.run([sys.executable, "-c", JOIN_AND_LEAVE, cfg.address], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=cfg.connect_timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{where}: no Ray cluster answered within {cfg.connect_timeout:g} s (--connect-timeout); {hint}") from None
    if trial.returncode:
        raise UserError(f"{where}: cannot join a Ray cluster there ({_error_line(trial.stderr)}); {hint}")
    try:
        ray.init(address=cfg.address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as e:  # the cluster went away between the trial and now
        raise UserError(f"{where}: cannot join a Ray cluster there ({str(e).strip().splitlines()[0]}); {hint}") from None


def _concurrency(ray, cfg: SweepConfig) -> int:
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    fit = int(cpus // cfg.cpus_per_run)
    if cfg.gpus_per_run:
        fit = min(fit, int(gpus / cfg.gpus_per_run + 1e-9))
    if fit < 1:
        raise UserError(f"--cpus-per-run {cfg.cpus_per_run} --gpus-per-run {cfg.gpus_per_run}: no run fits on the Ray "
                        f"cluster ({cpus:g} CPUs, {gpus:g} GPUs)")
    return min(fit, cfg.max_concurrent) if cfg.max_concurrent else fit


def _check_resources(cfg: SweepConfig) -> None:
    if cfg.cpus_per_run < 1:
        raise UserError(f"--cpus-per-run: must be at least 1, got {cfg.cpus_per_run}")
    if cfg.gpus_per_run < 0 or (cfg.gpus_per_run > 1 and cfg.gpus_per_run != int(cfg.gpus_per_run)):
        raise UserError(f"--gpus-per-run {cfg.gpus_per_run}: a fraction of one GPU, or a whole number of GPUs")
    if cfg.max_concurrent < 0:
        raise UserError(f"--max-concurrent: must be >= 0, got {cfg.max_concurrent}")
    if not cfg.out:
        raise UserError("--out: no sweep directory given")
    if not cfg.connect_timeout > 0:
        raise UserError(f"--connect-timeout: must be positive seconds, got {cfg.connect_timeout:g}")


def _run_all(ray, runs: list[Run], root: Path, cfg: SweepConfig, limit: int, ledger: Ledger) -> None:
    """Start runs as their pretraining finishes, at most ``limit`` at once, until none is left."""
    task = ray.remote(execute).options(num_cpus=cfg.cpus_per_run, num_gpus=cfg.gpus_per_run, max_retries=0)
    device = "cuda" if cfg.gpus_per_run else "cpu"
    pending = [run for run in runs if ledger[run.path] == "pending"]
    in_flight: dict = {}
    try:
        while pending or in_flight:
            for run in list(pending):
                before = ledger[run.after] if run.after else "finished"
                if before in ("failed", "skipped"):
                    pending.remove(run)
                    ledger.set(run.path, "skipped", error=f"its pretraining run {run.after} {before}")
                elif before == "finished" and len(in_flight) < limit:
                    pending.remove(run)
                    in_flight[task.remote(run, root, os.getcwd(), cfg.cpus_per_run, device)] = run
                    ledger.set(run.path, "running")
            if not in_flight:
                break
            # A timeout so that Ctrl-C reaches Python while runs go on.
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            if not ready:
                continue
            ref = ready[0]
            run = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker died (e.g. killed for memory)
                error = str(e).strip().splitlines()[0]
                write_error(root / run.path, f"Ray task failed: {e}\n")
                result = {"status": "failed", "error": error}
            ledger.set(run.path, result.pop("status"), **result)
    except KeyboardInterrupt:
        for ref, run in in_flight.items():
            ray.cancel(ref, force=True)
            ledger.set(run.path, "pending", announce=False, interrupted=True)
        raise


def sweep(cfg: SweepConfig) -> int:
    """Run (or with --dry-run, print) the grid; exit status 1 when a run failed or was skipped."""
    _check_resources(cfg)
    runs = plan_runs(load_sweep(cfg))
    root = Path(cfg.out).resolve()
    saved = _check_tree(root, runs)
    threads, device = cfg.cpus_per_run, "cuda" if cfg.gpus_per_run else "cpu"
    if cfg.dry_run:
        for run in runs:
            done = finished(root / run.path)
            args = command(run, root, bool(list_checkpoints(root / run.path)), threads, device)
            print(f"{run.path}: finished" if done else f"{run.path}: wsrl {shlex.join(args)}")
        return 0
    try:
        import ray
    except ImportError:
        raise UserError("wsrl sweep: needs Ray (pip install 'wsrl[sweep]')") from None

    _connect(ray, cfg)  # first: a sweep that cannot reach its cluster leaves --out as it was
    try:
        (root / "_sweep").mkdir(parents=True, exist_ok=True)
        plan = {**saved, **{run.path: {"kind": run.kind, "args": list(run.args), "after": run.after} for run in runs}}
        atomic_write(root / "_sweep" / "plan.json", lambda tmp: tmp.write_text(json.dumps(plan, indent=1)))
        limit = _concurrency(ray, cfg)
        ledger = Ledger(root, runs)
        n_pre = sum(run.kind == "pretrain" for run in runs)
        print(f"wsrl sweep: {len(runs)} runs ({n_pre} pretraining, {len(runs) - n_pre} fine-tuning) in {root}; "
              f"{'Ray at ' + cfg.address if cfg.address else 'local Ray'}, at most {limit} at once, "
              f"{cfg.cpus_per_run} CPU and {cfg.gpus_per_run:g} GPU each", flush=True)
        earlier = [run for run in runs if finished(root / run.path)]
        for run in earlier:
            ledger.set(run.path, "finished", announce=False, earlier=True)
        if earlier:
            ledger.announce(f"{len(earlier)} run{'s' if len(earlier) > 1 else ''} finished earlier")
        try:
            _run_all(ray, runs, root, cfg, limit, ledger)
        except KeyboardInterrupt:
            print("wsrl sweep: interrupted; the same command resumes it", file=sys.stderr)
            return 130
    finally:
        ray.shutdown()
    bad = {path: info for path, info in ledger.status.items() if info["status"] in ("failed", "skipped")}
    print(f"wsrl sweep: {len(runs) - len(bad)} of {len(runs)} runs finished in {root}")
    for path, info in bad.items():
        where = f" ({root / path / 'error.txt'})" if info["status"] == "failed" else ""
        print(f"  {info['status']} {path}: {info.get('error')}{where}")
    return 1 if bad else 0
