"""Every recipe on every domain resolves to the settings written down from the authors' release
(experiments/scripts/<domain>/launch_*.sh, experiments/configs/*.py, finetune.py's flag defaults)."""

from importlib import resources
from typing import get_args

import pytest

from wsrl.config import RecipeName, to_dict
from wsrl.errors import UserError
from wsrl.recipes import finetune_defaults, pretrain_as, pretrain_defaults

ENVS = {"locomotion": "hopper-medium-v2", "antmaze": "antmaze-umaze-v2", "kitchen": "kitchen-mixed-v0",
        "adroit": "door-human-v1"}

# (pretraining algo, offline steps, critic hidden, actor hidden, last-hidden init scale) per domain:
# train_config.py <domain>_cql and the launch scripts' --num_offline_steps.
DOMAIN = {"locomotion": ("cql", 250_000, (256, 256), (256, 256), 0.01),
          "antmaze": ("calql", 1_000_000, (256,) * 4, (256, 256), 0.01),
          "kitchen": ("calql", 250_000, (512,) * 3, (512,) * 3, None),
          "adroit": ("calql", 20_000, (512,) * 3, (512, 512), 0.01)}
CQL_LOSS = {"locomotion": dict(cql_alpha=5.0, cql_lagrange=False, cql_importance_sample=True),
            "antmaze": dict(cql_alpha=1.0, cql_lagrange=True, cql_target_gap=0.8, cql_importance_sample=True),
            "kitchen": dict(cql_alpha=5.0, cql_lagrange=False, cql_importance_sample=False),
            "adroit": dict(cql_alpha=1.0, cql_lagrange=False, cql_importance_sample=True)}
ONLINE_CQL_ALPHA = {"locomotion": 5.0, "kitchen": 5.0, "adroit": 1.0}  # antmaze_cql has none: Lagrange goes on
IQL_LOSS = {"locomotion": (0.7, 3.0, 0.0), "antmaze": (0.9, 10.0, 0.0), "kitchen": (0.7, 0.5, 0.1), "adroit": (0.7, 0.5, 0.1)}


def _check(cfg, **expected):
    for path, value in expected.items():
        obj = cfg
        for part in path.split("__"):
            obj = getattr(obj, part)
        assert obj == value, f"{path}: {obj} != {value}"


def test_recipe_names_match_the_files():
    files = {f.name[:-5] for f in resources.files("wsrl.configs").iterdir() if f.name.endswith(".json")}
    assert files - {"algorithms"} == set(get_args(RecipeName))


@pytest.mark.parametrize("domain", list(ENVS))
def test_wsrl_and_its_variants(domain):
    algo, steps, critic, actor, scale = DOMAIN[domain]
    pre = pretrain_defaults(ENVS[domain], "wsrl", None)
    _check(pre, recipe="wsrl", algo=algo, steps=steps, batch_size=256, net__critic_hidden=critic, net__actor_hidden=actor,
           net__ensemble_size=10, net__subsample_size=2, net__layer_norm=True, net__shared_critic_head=False,
           net__critic_final_scale=scale, net__actor_final_scale=scale, net__init="orthogonal",
           net__actor_std="uniform" if domain == "antmaze" else "state", net__actor_tanh=True,
           agent__cql_n_actions=10, agent__max_target_backup=True, agent__actor_lr=1e-4, agent__critic_lr=3e-4,
           agent__temperature_lr=1e-4, agent__discount=0.99, agent__tau=0.005, agent__backup_entropy=False,
           **{f"agent__{k}": v for k, v in CQL_LOSS[domain].items()})
    saved = to_dict(pre)
    ft = finetune_defaults("", None, None, saved)
    _check(ft, recipe="wsrl", env=ENVS[domain], online_algo="sac", utd=4, batch_size=1024, warmup_steps=5000, steps=500_000,
           offline_ratio=0.0, offline_append=False, buffer_capacity=2_000_000, eval_every=20_000, eval_episodes=20,
           agent__max_target_backup=domain == "antmaze", net=pre.net, sample_finished_episodes=False)
    assert finetune_defaults("", "wsrl-no-warmup", None, saved).warmup_steps == 0
    assert finetune_defaults("", "wsrl-retain", None, saved).offline_ratio == 0.5
    assert finetune_defaults("", "wsrl-append", None, saved).offline_append
    for variant in ("wsrl-no-warmup", "wsrl-retain", "wsrl-append"):
        assert pretrain_as(variant) == "wsrl" and pretrain_defaults(ENVS[domain], variant, None) == pre


@pytest.mark.parametrize("domain", list(ENVS))
@pytest.mark.parametrize("baseline", ["cql", "calql"])
def test_cql_and_calql_baselines(domain, baseline):
    _, steps, critic, actor, scale = DOMAIN[domain]
    pre = pretrain_defaults(ENVS[domain], f"{baseline}-finetune", None)
    # finetune.py without --use_redq: critic_ensemble_size 2, subsample None (min over both), no LayerNorm.
    _check(pre, recipe=f"{baseline}-finetune", algo=baseline, steps=steps, net__critic_hidden=critic, net__actor_hidden=actor,
           net__ensemble_size=2, net__subsample_size=2, net__layer_norm=False, net__critic_final_scale=scale,
           agent__max_target_backup=True, **{f"agent__{k}": v for k, v in CQL_LOSS[domain].items()})
    ft = finetune_defaults("", None, None, to_dict(pre))
    _check(ft, online_algo=baseline, utd=1, batch_size=256, warmup_steps=0, offline_ratio=0.0, agent__max_target_backup=True,
           agent__cql_alpha=ONLINE_CQL_ALPHA.get(domain, CQL_LOSS[domain]["cql_alpha"]),
           agent__cql_lagrange=domain == "antmaze", sample_finished_episodes=baseline == "calql")


@pytest.mark.parametrize("domain", list(ENVS))
def test_iql_baseline_is_the_release_model(domain):
    expectile, temperature, dropout = IQL_LOSS[domain]
    pre = pretrain_defaults(ENVS[domain], "iql-finetune", None)
    _check(pre, algo="iql", steps=DOMAIN[domain][1], net__critic_hidden=(256, 256), net__actor_hidden=(256, 256),
           net__ensemble_size=2, net__subsample_size=2, net__layer_norm=False, net__init="var_scaling",
           net__actor_std="uniform", net__actor_tanh=False, net__actor_final_scale=0.01, net__critic_final_scale=None,
           net__actor_dropout=dropout, agent__expectile=expectile, agent__iql_temperature=temperature,
           agent__actor_lr=3e-4, agent__critic_lr=3e-4, agent__value_lr=3e-4)
    _check(finetune_defaults("", None, None, to_dict(pre)), online_algo="iql", utd=1, batch_size=256, warmup_steps=0)
    # The ensemble IQL that WSRL can fine-tune from: the wsrl recipe's networks with IQL's losses.
    ensemble = pretrain_defaults(ENVS[domain], "wsrl", "iql")
    _check(ensemble, algo="iql", net__ensemble_size=10, net__layer_norm=True, net__actor_tanh=True,
           net__actor_dropout=dropout, agent__expectile=expectile)


@pytest.mark.parametrize("domain", list(ENVS))
def test_rlpd_has_no_pretraining_and_wsrl_networks(domain):
    _, _, critic, actor, _ = DOMAIN[domain]
    assert pretrain_as("rlpd") is None
    with pytest.raises(UserError, match="has no pretraining"):
        pretrain_defaults(ENVS[domain], "rlpd", None)
    ft = finetune_defaults(ENVS[domain], "rlpd", None, None)
    _check(ft, recipe="rlpd", from_scratch=True, online_algo="sac", offline_ratio=0.5, utd=4, batch_size=1024,
           warmup_steps=5000, warmup_actions="policy", net__critic_hidden=critic, net__actor_hidden=actor,
           net__ensemble_size=10, net__layer_norm=True, net__subsample_size=1 if domain == "antmaze" else 2,
           agent__max_target_backup=domain == "antmaze")


def test_online_algo_alone_takes_only_the_baselines_online_half():
    saved = to_dict(pretrain_defaults("hopper-medium-v2", "wsrl", None))
    ft = finetune_defaults("", None, "cql", saved)
    _check(ft, recipe="wsrl", utd=1, batch_size=256, warmup_steps=0, agent__cql_alpha=5.0)
    assert ft.net == pretrain_defaults("hopper-medium-v2", "wsrl", None).net  # the checkpoint's ensemble
