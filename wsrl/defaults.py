"""Where the settings of `wsrl pretrain` and `wsrl finetune` come from: ``run_defaults`` says it once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from wsrl.checkpoint import Checkpoint, upgrade_config
from wsrl.config import FinetuneConfig, PretrainConfig, from_dict
from wsrl.errors import UserError
from wsrl.recipes import finetune_defaults, pretrain_defaults


def run_defaults(command: Literal["pretrain", "finetune"], env: str = "", recipe: str = "", algo: str = "",
                 resume: str = "", pretrained: Checkpoint | None = None) -> PretrainConfig | FinetuneConfig:
    """The config that the flags of ``wsrl <command>`` (pretrain or finetune) apply to. ``env``,
    ``recipe``, ``algo`` (fine-tuning: ``--online-algo``) and ``resume`` are those flags' values ('' if
    not given); ``pretrained`` is the checkpoint ``--checkpoint`` names, read by the caller, who hands
    it on to the run so that it is read once.

    Precedence, lowest first; each level overrides the fields it sets:

    1. the dataclass defaults (wsrl/config.py);
    2. pretraining: the recipe's pretrain half (an ``extends`` parent before its child, the ``all``
       section before the domain's), then the loss settings of its algorithm, or of ``--algo``, for
       the domain (configs/algorithms.json); wsrl/recipes.py ``pretrain_defaults``;
       fine-tuning: the checkpoint's env, networks, losses, reward shaping and recipe, then the
       finetune half of that recipe, or of ``--recipe``, or with ``--online-algo X`` alone of X's
       baseline (the method stays the checkpoint's); without a checkpoint (``--from-scratch``,
       RLPD) the recipe's pretraining networks too; ``finetune_defaults``;
    3. ``--resume RUN``: RUN's config.json, in place of 2, so a run goes on with the settings it began with;
    4. the flags, which wsrl/cli.py parses over this config.

    When the run starts (``wsrl.train.with_env_defaults``), the env suite (envs/*.json) fills the
    reward scale and bias and the sparse-reward switch wherever all of the above left them None, so
    that a config built in Python gets them too; config.json records the filled values.
    """
    if resume:
        return _resumed(PretrainConfig if command == "pretrain" else FinetuneConfig, resume)
    if command == "pretrain":
        return pretrain_defaults(env, recipe or "wsrl", algo or None)
    return finetune_defaults(env, recipe or None, algo or None, pretrained.meta["config"] if pretrained else None)


def _resumed(cls: type, run_dir: str) -> PretrainConfig | FinetuneConfig:
    """The run's own config.json, in today's fields, writing to the run it resumes."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.json there (not a wsrl run directory)")
    data = upgrade_config(json.loads(path.read_text()))
    data.pop("kind", None)
    return from_dict(cls, {**data, "resume": run_dir, "out": run_dir}, str(path))
