"""`wsrl sweep`: envs x methods x seeds, each run a Ray task that runs the real CLI (DESIGN.md §7).

A sweep file names envs (with their datasets), methods (a named recipe, plus optional pretrain /
finetune flags) and seeds; docs/sweep.md has the format. The run tree is deterministic:

- ``DIR/<env>/_pretrain/<recipe>[-<hash>]/seed<k>``: one pretraining run per env, pretraining
  recipe (``wsrl.recipes.pretrain_as``), method-level pretrain flags (their hash) and seed, shared by
  every method that pretrains that way;
- ``DIR/<env>/<method>/seed<k>``: the fine-tuning runs, started from that pretraining run;
- ``DIR/_sweep/``: ``plan.json`` (each run's flags), ``events.jsonl`` (every start and end),
  ``status.json`` (each run's latest state), ``logs/`` (each run's console output), ``locks/``.

Each run is ``python -m wsrl.cli pretrain|finetune ...``, exactly what a user could type. A run is
finished when its newest checkpoint is at its ``--steps``; running the sweep again skips finished
runs, resumes the others from their checkpoints (``--resume``) and starts the rest. A failed run
leaves ``error.txt`` in its folder, the fine-tuning runs of a failed pretraining run are skipped,
and everything else goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from wsrl.atomic import atomic_write
from wsrl.checkpoint import list_checkpoints, run_finished as finished
from wsrl.config import FinetuneConfig, PretrainConfig, SweepConfig
from wsrl.errors import UserError
from wsrl.recipes import pretrain_as, recipe_names

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Set by the sweep for every run (from the env, the method, the seed and the run tree).
RESERVED = {"env", "dataset", "seed", "out", "resume", "overwrite", "recipe", "checkpoint", "threads", "device"}
SECTIONS = {"envs", "methods", "seeds", "pretrain", "finetune"}

Flags = dict  # flag name (without --) -> list of values, or True/False for a boolean flag


@dataclass
class Env:
    name: str
    env: str
    dataset: str = ""
    pretrain: Flags = field(default_factory=dict)
    finetune: Flags = field(default_factory=dict)


@dataclass
class Method:
    name: str
    recipe: str
    pretrain: Flags = field(default_factory=dict)
    finetune: Flags = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    path: str
    """Relative to the sweep root, e.g. hopper/wsrl/seed0."""
    kind: str
    """pretrain or finetune."""
    args: tuple[str, ...]
    """The command after `wsrl`, less --checkpoint, --out and the resource flags."""
    after: str = ""
    """The pretraining run this one starts from (a path like ``path``), if any."""


def flag_args(flags: Flags) -> list[str]:
    args: list[str] = []
    for name, value in flags.items():
        if value is True or value is False:
            args.append(f"--{name}" if value else f"--no-{name}")
        else:
            args += [f"--{name}", *value]
    return args


def _check_flag(name: str, where: str) -> str:
    name = name.replace("_", "-")
    if not FLAG.match(name):
        raise UserError(f"{where}: '{name}' is not a flag name (like steps or critic-hidden)")
    if name in RESERVED or name.removeprefix("no-") in RESERVED:
        raise UserError(f"{where}: --{name} is set by the sweep itself (from its envs, methods, seeds and --out)")
    return name


def flags_from_table(table, where: str) -> Flags:
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table of flags (steps = 1000, critic-hidden = [64, 64], ...)")
    flags: Flags = {}
    for key, value in table.items():
        name = _check_flag(str(key), f"{where}.{key}")
        scalar = (int, float, str)
        if isinstance(value, bool):
            flags[name] = value
        elif isinstance(value, scalar):
            flags[name] = [str(value)]
        elif isinstance(value, list) and value and all(isinstance(v, scalar) and not isinstance(v, bool) for v in value):
            flags[name] = [str(v) for v in value]
        else:
            raise UserError(f"{where}.{key}: a flag's value is a number, a string, true/false or a list of numbers/strings")
    return flags


def flags_from_string(text: str, where: str) -> Flags:
    """``--steps 100 --critic-hidden 32 32 --no-layer-norm`` as flags."""
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    flags: Flags = {}
    name = ""
    for token in tokens:
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            negated = key.startswith("no-") and not value
            name = _check_flag(key.removeprefix("no-") if negated else key, where)
            flags[name] = [value] if value else not negated
        elif not name or flags[name] is False:
            raise UserError(f"{where}: '{token}' does not follow a --flag")
        else:
            flags[name] = [token] if flags[name] is True else [*flags[name], token]
    return flags


def _validate_flags(cls: type, flags: Flags, where: str) -> None:
    """Parse the flags alone with the command's dataclass, so a misspelt flag or a bad value is
    reported now, not by every run (after the pretraining runs have taken their time)."""
    import tyro

    if not flags:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            tyro.cli(cls, default=cls(), args=flag_args(flags), config=(tyro.conf.OmitArgPrefixes,))
    except SystemExit:
        # tyro's message is a box: a title, the problem, then a suggestion or the flag's help.
        lines = [line.strip(" │╭╮╰╯─┃━┏┓┗┛") for line in captured.getvalue().splitlines()]
        lines = [line for line in lines if line.strip("-")]
        ends = [i for i, line in enumerate(lines) if line.startswith(("Perhaps you meant", "Argument helptext", "For full"))]
        message = "; ".join(lines[1:ends[0]] if ends and ends[0] > 1 else lines[:1])
        if ends and lines[ends[0]].startswith("Perhaps") and ends[0] + 1 < len(lines):
            message += f" (perhaps {lines[ends[0] + 1].split()[0]})"
        raise UserError(f"{where}: {message or 'not valid flags'}") from None


def _dataset(value, base: Path, where: str) -> str:
    """A dataset path is taken relative to ``base`` (the sweep file's folder, or the current
    folder for --envs) and made absolute, so every run finds it wherever Ray starts it; D4RL
    names and ``minari:`` ids are passed on as they are."""
    if not isinstance(value, str):
        raise UserError(f"{where}: expected a path, a D4RL name or minari:<id>")
    if not value or value.startswith("minari:") or not (os.sep in value or value.endswith((".hdf5", ".h5"))):
        return value
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise UserError(f"{where}: no such file {path}")
    return str(path)


def _check_name(name, where: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError(f"{where}: '{name}' cannot name a folder of the run tree (letters, digits, . _ -; "
                        f"not starting with . or _)")
    return name


def _table(value, keys: set[str], where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a table with {', '.join(sorted(keys))}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(keys))})")
    return value


def _named(section, where: str) -> dict:
    """A section given as a table of name -> entry, or as a list of names."""
    if isinstance(section, list):
        return {_check_name(name, where): {} for name in section}
    if not isinstance(section, dict):
        raise UserError(f"{where}: expected a table (or a list of names)")
    return section


def parse_envs(section, base: Path, where: str) -> dict[str, Env]:
    envs = {}
    for name, entry in _named(section, where).items():
        at = f"{where}.{name}"
        entry = _table(entry, {"env", "dataset", "pretrain", "finetune"}, at)
        envs[_check_name(name, at)] = Env(name, str(entry.get("env", name)), _dataset(entry.get("dataset", ""), base, f"{at}.dataset"),
                                          flags_from_table(entry.get("pretrain", {}), f"{at}.pretrain"),
                                          flags_from_table(entry.get("finetune", {}), f"{at}.finetune"))
    return envs


def _check_env(env: Env, where: str) -> None:
    """Build the env once, so a misspelt id fails here and not in every run."""
    from wsrl.envs import make_env, resolve_env

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the env's own warnings are for its runs' logs
            make_env(resolve_env(env.env)).close()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _check_recipe(recipe, where: str) -> str:
    if recipe not in recipe_names():
        raise UserError(f"{where}: unknown recipe '{recipe}' (known: {', '.join(recipe_names())})")
    return recipe


def parse_methods(section, where: str) -> dict[str, Method]:
    methods = {}
    for name, entry in _named(section, where).items():
        at = f"{where}.{name}"
        entry = _table(entry, {"recipe", "pretrain", "finetune"}, at)
        recipe = _check_recipe(entry.get("recipe", name), f"{at}.recipe")
        pretrain = flags_from_table(entry.get("pretrain", {}), f"{at}.pretrain")
        if pretrain and pretrain_as(recipe) is None:
            raise UserError(f"{at}.pretrain: recipe {recipe} has no pretraining")
        methods[_check_name(name, at)] = Method(name, recipe, pretrain, flags_from_table(entry.get("finetune", {}), f"{at}.finetune"))
    return methods


def parse_seeds(value, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise UserError(f"{where}: expected a list of seeds (non-negative integers)")
    if len(set(value)) != len(value):
        raise UserError(f"{where}: a seed is listed twice")
    return tuple(value)


def read_sweep_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no such sweep file")
    text = file.read_text()
    if file.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    elif file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the sweep as .toml") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        raise UserError(f"{path}: a sweep file is .toml, .yaml or .yml")
    data = _table(data if data is not None else {}, SECTIONS, path)
    return data


@dataclass
class Sweep:
    envs: dict[str, Env]
    methods: dict[str, Method]
    seeds: tuple[int, ...]
    pretrain: Flags
    finetune: Flags


def load_sweep(cfg: SweepConfig) -> Sweep:
    """The sweep file with the command line's --envs/--methods/--seeds/--*-flags over it."""
    data, base, where = {}, Path.cwd(), "sweep"
    if cfg.file:
        data, base, where = read_sweep_file(cfg.file), Path(cfg.file).resolve().parent, cfg.file
    envs = parse_envs(data.get("envs", {}), base, f"{where}: envs")
    methods = parse_methods(data.get("methods", {}), f"{where}: methods")
    seeds = parse_seeds(data.get("seeds", []), f"{where}: seeds")
    if cfg.envs:
        chosen = {}
        for item in cfg.envs:
            name, _, dataset = item.partition("=")
            entry = envs.get(name) or Env(_check_name(name, "--envs"), name)
            if dataset:
                entry = Env(name, entry.env, _dataset(dataset, Path.cwd(), f"--envs {item}"), entry.pretrain, entry.finetune)
            chosen[name] = entry
        envs = chosen
    if cfg.methods:
        methods = {name: methods.get(name) or Method(_check_name(name, "--methods"), _check_recipe(name, "--methods"))
                   for name in cfg.methods}
    if cfg.seeds:
        seeds = parse_seeds(list(cfg.seeds), "--seeds")
    for what, value, flag in (("envs", envs, "--envs"), ("methods", methods, "--methods"), ("seeds", seeds, "--seeds")):
        if not value:
            raise UserError(f"{where}: no {what} (give them in the sweep file or with {flag})")
    pretrain = {**flags_from_table(data.get("pretrain", {}), f"{where}: pretrain"),
                **flags_from_string(cfg.pretrain_flags, "--pretrain-flags")}
    finetune = {**flags_from_table(data.get("finetune", {}), f"{where}: finetune"),
                **flags_from_string(cfg.finetune_flags, "--finetune-flags")}
    for kind, cls in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        _validate_flags(cls, pretrain if kind == "pretrain" else finetune, f"{where}: {kind}")
        for entry, section in [*((e, "envs") for e in envs.values()), *((m, "methods") for m in methods.values())]:
            _validate_flags(cls, getattr(entry, kind), f"{where}: {section}.{entry.name}.{kind}")
    for env in envs.values():
        _check_env(env, f"{where}: envs.{env.name}")
    return Sweep(envs, methods, seeds, pretrain, finetune)


def _digest(flags: Flags) -> str:
    return hashlib.sha256(json.dumps(flags, sort_keys=True).encode()).hexdigest()[:8]


def plan_runs(sweep: Sweep) -> list[Run]:
    """Every run of the grid, pretraining runs first, each pretraining run once."""
    pretrains: dict[str, Run] = {}
    finetunes: list[Run] = []
    for env in sweep.envs.values():
        data = ["--dataset", env.dataset] if env.dataset else []
        for seed in sweep.seeds:
            for method in sweep.methods.values():
                common = ["--env", env.env, "--seed", str(seed)]
                base = pretrain_as(method.recipe)
                after = ""
                if base is not None:
                    after = f"{env.name}/_pretrain/{base}{'-' + _digest(method.pretrain) if method.pretrain else ''}/seed{seed}"
                    flags = {**sweep.pretrain, **env.pretrain, **method.pretrain}
                    pretrains.setdefault(after, Run(after, "pretrain", ("pretrain", "--recipe", base, *common, *data, *flag_args(flags))))
                # Without a pretraining run (RLPD) the dataset is the method's offline data.
                ft_data = data if base is None else []
                flags = {**sweep.finetune, **env.finetune, **method.finetune}
                finetunes.append(Run(f"{env.name}/{method.name}/seed{seed}", "finetune",
                                     ("finetune", "--recipe", method.recipe, *common, *ft_data, *flag_args(flags)), after))
    return [*pretrains.values(), *finetunes]


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


def execute(run: dict, root: str, cwd: str, threads: int, device: str) -> dict:
    """One run, on a Ray worker: start, resume or (if another sweep finished it) skip it."""
    run_obj, root_dir = Run(**{**run, "args": tuple(run["args"])}), Path(root)
    run_dir, state = root_dir / run_obj.path, root_dir / "_sweep"
    lock_path = state / "locks" / f"{run_obj.path}.lock"
    log_path = state / "logs" / f"{run_obj.path}.log"
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
        cmd = [sys.executable, "-m", "wsrl.cli", *command(run_obj, root_dir, resume, threads, device)]
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

    def set(self, path: str, status: str, **info) -> None:
        self.status[path] = {"status": status, **info}
        with open(self.state / "events.jsonl", "a") as f:
            f.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": path,
                                "event": status, **info}) + "\n")
        atomic_write(self.state / "status.json", lambda tmp: tmp.write_text(json.dumps(self.status, indent=1)))
        counts = {s: sum(v["status"] == s for v in self.status.values())
                  for s in ("finished", "running", "failed", "skipped", "pending")}
        detail = {"finished": "finished earlier" if info.get("earlier") else
                  f"finished in {info.get('seconds')} s" + (" (resumed)" if info.get("resumed") else ""),
                  "running": "started", "failed": f"FAILED: {info.get('error')}",
                  "skipped": f"skipped: {info.get('error')}"}.get(status, status)
        print(f"[{counts['finished']} done, {counts['running']} running, {counts['failed']} failed, "
              f"{counts['skipped']} skipped, {counts['pending']} pending / {len(self.status)}] {path}: {detail}", flush=True)


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


def _connect(ray, cfg: SweepConfig) -> None:
    if not cfg.address:
        # A Ray of its own (not one a `ray start` left on this machine), quiet: its dashboard
        # would be a second progress view nobody asked for, its notices are about clusters.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        return
    try:
        ray.init(address=cfg.address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as e:
        raise UserError(f"--address {cfg.address}: cannot join a Ray cluster there ({str(e).splitlines()[0]}); is "
                        f"`ray start --head` running there, and with token authentication RAY_AUTH_MODE=token set "
                        f"here (docs/sweep.md)?") from None


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
                    in_flight[task.remote(asdict(run), str(root), os.getcwd(), cfg.cpus_per_run, device)] = run
                    ledger.set(run.path, "running")
            if not in_flight:
                break
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker died (e.g. killed for memory)
                error = str(e).strip().splitlines()[0]
                write_error(root / run.path, f"Ray task failed: {e}\n")
                result = {"status": "failed", "error": error}
            ledger.set(run.path, result.pop("status"), **result)
    except KeyboardInterrupt:
        for ref in in_flight:
            ray.cancel(ref, force=True)
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

    (root / "_sweep").mkdir(parents=True, exist_ok=True)
    plan = {**saved, **{run.path: {"kind": run.kind, "args": list(run.args), "after": run.after} for run in runs}}
    atomic_write(root / "_sweep" / "plan.json", lambda tmp: tmp.write_text(json.dumps(plan, indent=1)))
    _connect(ray, cfg)
    try:
        limit = _concurrency(ray, cfg)
        ledger = Ledger(root, runs)
        n_pre = sum(run.kind == "pretrain" for run in runs)
        print(f"wsrl sweep: {len(runs)} runs ({n_pre} pretraining, {len(runs) - n_pre} fine-tuning) in {root}; "
              f"{'Ray at ' + cfg.address if cfg.address else 'local Ray'}, at most {limit} at once, "
              f"{cfg.cpus_per_run} CPU and {cfg.gpus_per_run:g} GPU each", flush=True)
        for run in runs:
            if finished(root / run.path):
                ledger.set(run.path, "finished", earlier=True)
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
