"""Named two-phase recipes: which pretraining and fine-tuning settings a method uses per domain.

A recipe is data, ``configs/<name>.json``, written from the authors' release's launch scripts
(docs/recipes.md has the table). Each has a ``pretrain`` and a ``finetune`` half, each with an
``all`` section and one per domain, and may ``extends`` another recipe. ``pretrain_as`` names the
recipe whose pretraining run it fine-tunes from: WSRL's variants share WSRL's, each baseline has
its own, RLPD none. Loss settings per algorithm and domain live in ``configs/algorithms.json`` and
apply whichever recipe pretrains with that algorithm. Where these stand among a run's other
sources of settings (checkpoint, resumed run, env suite, flags): `wsrl.defaults.run_defaults`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import get_args

from wsrl.config import FinetuneConfig, PretrainConfig, RecipeName, merge, merge_dicts
from wsrl.errors import UserError

ONLINE_RECIPE = {"sac": "wsrl", "cql": "cql-finetune", "calql": "calql-finetune", "iql": "iql-finetune"}
"""The baseline whose online settings ``--online-algo X`` takes when no --recipe is given."""
DOMAINS = ("locomotion", "antmaze", "kitchen", "adroit")


def recipe_names() -> list[str]:
    return list(get_args(RecipeName))


@functools.cache
def _file(name: str) -> dict:
    return json.loads((resources.files("wsrl.configs") / f"{name}.json").read_text())


def load_recipe(name: str, where: str = "--recipe") -> dict:
    """The recipe file ``name``; an unknown name is one error naming ``where`` it was given."""
    if name not in recipe_names():
        raise UserError(f"{where}: unknown recipe '{name}' (known: {', '.join(recipe_names())})")
    return _file(name)


def pretrain_as(name: str) -> str | None:
    """The recipe whose pretraining run ``name`` fine-tunes from (None: it has no pretraining)."""
    return load_recipe(name)["pretrain_as"]


def pretraining_owner(name: str, where: str = "--recipe") -> str:
    """`pretrain_as`, for a recipe that must pretrain: one without pretraining (RLPD) is one error."""
    owner = pretrain_as(name)
    if owner is None:
        raise UserError(f"{where}: recipe {name} has no pretraining; run `wsrl finetune --recipe {name} --dataset ...`")
    return owner


def _half(name: str, phase: str, domain: str) -> dict:
    recipe = load_recipe(name)
    parent = _half(recipe["extends"], phase, domain) if "extends" in recipe else {}
    sections = recipe.get(phase, {})
    return merge_dicts(merge_dicts(parent, sections.get("all", {})), sections.get(domain, {}))


def algorithm_settings(algo: str, domain: str) -> dict:
    algos = _file("algorithms")
    entry = algos[algo]
    entry = algos[entry["same_as"]] if "same_as" in entry else entry
    return merge_dicts(entry.get("all", {}), entry.get(domain, {}))


def pretrain_settings(recipe: str, domain: str, algo: str | None = None) -> dict:
    """The overrides of ``wsrl pretrain --recipe recipe`` on ``domain`` (``algo``: --algo, if given)."""
    owner = pretraining_owner(recipe)
    settings = _half(owner, "pretrain", domain)
    settings["algo"] = algo or settings["algo"]
    return {**merge_dicts(settings, algorithm_settings(settings["algo"], domain)), "recipe": owner}


def finetune_settings(recipe: str, domain: str, with_networks: bool) -> dict:
    """The overrides of ``wsrl finetune --recipe recipe`` on ``domain``; ``with_networks`` adds the
    recipe's pretraining networks (for a run without a checkpoint)."""
    settings = _half(recipe, "finetune", domain)
    if with_networks:
        networks = _half(recipe, "pretrain", domain).get("net", {})
        settings["net"] = merge_dicts(networks, settings.get("net", {}))
    return {**settings, "recipe": recipe}


def _domain(env: str) -> str:
    from wsrl.specs import resolve_env

    return resolve_env(env).domain if env else "locomotion"


def pretrain_defaults(env: str, recipe: str, algo: str | None) -> PretrainConfig:
    return merge(PretrainConfig(env=env), pretrain_settings(recipe or "wsrl", _domain(env), algo), f"recipe {recipe}")


def finetune_defaults(env: str, recipe: str | None, online_algo: str | None, checkpoint: dict | None) -> FinetuneConfig:
    """``checkpoint``: the saved pretraining config of the checkpoint to fine-tune, if any."""
    base = FinetuneConfig()
    if checkpoint is not None:
        carried = {k: checkpoint[k] for k in ("env", "net", "agent", "reward_scale", "reward_bias")}
        base = merge(base, {**carried, "recipe": checkpoint.get("recipe", "wsrl")}, "checkpoint")
        env = env or checkpoint["env"]
    if recipe:
        name = recipe
    elif online_algo:
        name = ONLINE_RECIPE[online_algo]
    else:
        name = base.recipe if checkpoint is not None else "wsrl"
    settings = finetune_settings(name, _domain(env), with_networks=checkpoint is None)
    if checkpoint is not None and not recipe:
        settings["recipe"] = base.recipe  # --online-algo alone changes the online half, not the method
    return merge(base, settings, f"recipe {name}")
