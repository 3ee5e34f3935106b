"""The grid of a sweep: a sweep file (and the command line's --envs/--methods/--seeds/--*-flags)
read into envs x methods x seeds, and the runs that make it (docs/sweep.md).

The run tree is deterministic:

- ``<env>/_pretrain/<recipe>[-<hash>]/seed<k>``: one pretraining run per env, pretraining recipe
  (``wsrl.recipes.pretrain_as``), method-level pretrain flags (their hash) and seed, shared by
  every method that pretrains that way;
- ``<env>/<method>/seed<k>``: the fine-tuning runs, started from that pretraining run.

Flags are checked here, against the commands' config dataclasses, so a misspelt flag is one line
before anything runs, not one failure per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from wsrl.config import FinetuneConfig, PretrainConfig, SweepConfig
from wsrl.errors import UserError
from wsrl.specs import resolve_env
from wsrl.recipes import finetune_settings, load_recipe, pretrain_as, pretraining_owner

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
        if isinstance(value, bool) and name.startswith("no-"):  # no-layer-norm = true is layer-norm = false
            flags[name.removeprefix("no-")] = not value
        elif isinstance(value, bool):
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


def parse_envs(section, base: Path, where: str, used: set[str] | None = None) -> dict[str, Env]:
    """The envs of a sweep file. Only the datasets of the envs in ``used`` (default: all) are looked
    up: the command line may leave an env out or give it another dataset, whose file may be missing."""
    envs = {}
    for name, entry in _named(section, where).items():
        at = f"{where}.{name}"
        entry = _table(entry, {"env", "dataset", "pretrain", "finetune"}, at)
        dataset = _dataset(entry.get("dataset", ""), base, f"{at}.dataset") if used is None or name in used else ""
        envs[_check_name(name, at)] = Env(name, str(entry.get("env", name)), dataset,
                                          flags_from_table(entry.get("pretrain", {}), f"{at}.pretrain"),
                                          flags_from_table(entry.get("finetune", {}), f"{at}.finetune"))
    return envs


def _check_env(env: Env, where: str) -> None:
    """Build the env once, so a misspelt id fails here and not in every run."""
    from wsrl.envs import make_env

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the env's own warnings are for its runs' logs
            make_env(resolve_env(env.env)).close()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def parse_methods(section, where: str) -> dict[str, Method]:
    methods = {}
    for name, entry in _named(section, where).items():
        at = f"{where}.{name}"
        entry = _table(entry, {"recipe", "pretrain", "finetune"}, at)
        recipe = entry.get("recipe", name)
        load_recipe(recipe, f"{at}.recipe")
        pretrain = flags_from_table(entry.get("pretrain", {}), f"{at}.pretrain")
        if pretrain:
            pretraining_owner(recipe, f"{at}.pretrain")
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
    given = [item.partition("=") for item in cfg.envs]
    used = {name for name, _, dataset in given if not dataset} if cfg.envs else None
    envs = parse_envs(data.get("envs", {}), base, f"{where}: envs", used)
    methods = parse_methods(data.get("methods", {}), f"{where}: methods")
    seeds = parse_seeds(data.get("seeds", []), f"{where}: seeds")
    if cfg.envs:
        chosen = {}
        for (name, _, dataset), item in zip(given, cfg.envs):
            entry = envs.get(name) or Env(_check_name(name, "--envs"), name)
            if dataset:
                entry = Env(name, entry.env, _dataset(dataset, Path.cwd(), f"--envs {item}"), entry.pretrain, entry.finetune)
            chosen[name] = entry
        envs = chosen
    if cfg.methods:
        for name in cfg.methods:
            if name not in methods:  # a recipe's name, used as is
                load_recipe(name, "--methods")
        methods = {name: methods.get(name) or Method(_check_name(name, "--methods"), name) for name in cfg.methods}
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


def uses_offline_data(recipe: str, env: str, flags: Flags) -> bool:
    """A fine-tuning run needs --dataset when its recipe or its flags keep offline data in its
    batches or its buffer (retention, RLPD); the others are not given it, so they never load it."""
    settings = finetune_settings(recipe, resolve_env(env).domain, with_networks=False)
    ratio = flags.get("offline-ratio", [settings.get("offline_ratio", 0.0)])
    append = flags.get("offline-append", settings.get("offline_append", False))
    return float(ratio[0]) > 0 or append is True


def plan_runs(sweep: Sweep) -> list[Run]:
    """Every run of the grid, pretraining runs first, each pretraining run once."""
    pretrains: dict[str, Run] = {}
    finetunes: list[Run] = []
    for env in sweep.envs.values():
        # A D4RL name is its own dataset (the file in the d4rl cache).
        dataset = env.dataset or (env.env if resolve_env(env.env).d4rl_name else "")
        data = ["--dataset", dataset] if dataset else []
        for seed in sweep.seeds:
            for method in sweep.methods.values():
                common = ["--env", env.env, "--seed", str(seed)]
                base = pretrain_as(method.recipe)
                after = ""
                if base is not None:
                    after = f"{env.name}/_pretrain/{base}{'-' + _digest(method.pretrain) if method.pretrain else ''}/seed{seed}"
                    flags = {**sweep.pretrain, **env.pretrain, **method.pretrain}
                    pretrains.setdefault(after, Run(after, "pretrain", ("pretrain", "--recipe", base, *common, *data, *flag_args(flags))))
                flags = {**sweep.finetune, **env.finetune, **method.finetune}
                ft_data = data if uses_offline_data(method.recipe, env.env, flags) else []
                finetunes.append(Run(f"{env.name}/{method.name}/seed{seed}", "finetune",
                                     ("finetune", "--recipe", method.recipe, *common, *ft_data, *flag_args(flags)), after))
    return [*pretrains.values(), *finetunes]
