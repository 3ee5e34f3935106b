"""Every knob of wsrl as a typed dataclass field.

The field docstrings are the ``--help`` text, the saved ``config.json`` is ``asdict`` of these
classes, and the recipes in ``configs/`` are partial dicts of the same fields (wsrl/defaults.py
says in which order they apply).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import tyro

from wsrl.errors import UserError
from wsrl.precision import Precision
from wsrl.schedule import OPTIMIZERS, OptimizerName, Schedule, check_schedule

Algo = Literal["cql", "calql", "iql"]
OnlineAlgo = Literal["sac", "cql", "calql", "iql"]
RecipeName = Literal["wsrl", "wsrl-no-warmup", "wsrl-retain", "wsrl-append", "cql-finetune", "calql-finetune",
                     "iql-finetune", "rlpd"]
"""The named two-phase recipes in configs/ (tests/test_recipes.py checks this list against the files)."""
ExportFormat = Literal["onnx", "pt2", "policy"]


@dataclass
class NetConfig:
    """Network shapes. Pretraining and fine-tuning must agree on these."""

    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each critic (and of the IQL value net)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the Gaussian actor."""
    ensemble_size: int = 10
    """Number of critics in the ensemble, stored as stacked weights."""
    subsample_size: int = 2
    """TD target = min over this many randomly chosen target critics."""
    layer_norm: bool = True
    """Dense -> LayerNorm -> ReLU in actor and critic hidden layers."""
    shared_critic_head: bool = False
    """One output layer shared by all critics (the authors' JAX release); default per-member heads."""
    actor_dropout: float = 0.0
    """Dropout rate in the actor's hidden layers while training (IQL on kitchen/adroit); off when acting."""
    actor_std: Literal["state", "uniform"] = "state"
    """state: the actor outputs its log-std; uniform: one learned log-std per action dimension (the release's AntMaze and IQL)."""
    actor_tanh: bool = True
    """tanh-squashed Gaussian; False: a plain Gaussian whose actions are clipped to [-1, 1] (the release's IQL)."""
    init: Literal["orthogonal", "var_scaling"] = "orthogonal"
    """Initialiser of the hidden layers (orthogonal gain sqrt(2), or Glorot-uniform as the release's IQL); heads are orthogonal sqrt(2)."""
    actor_final_scale: float | None = 0.01
    """Init scale of the actor's last hidden layer (the release's kernel_scale_final); None = like the others."""
    critic_final_scale: float | None = 0.01
    """Init scale of the critics' (and IQL value net's) last hidden layer; None = like the others (the release on kitchen and for IQL)."""
    release_exact: bool = False
    """Reproduce the authors' release's update quirks (docs/release.md): zero-gradient optimizer steps,
    all losses from the same parameters, a shared critic head, softplus multipliers, draws with replacement.
    Chosen at pretraining; fine-tuning must match."""

    # What --release-exact changes outside the update (wsrl/agents/release_update.py is the update),
    # each under the name of what it does, so the networks and the batches need not know the mode.
    @property
    def critic_head_shared(self) -> bool:
        return self.shared_critic_head or self.release_exact

    @property
    def softplus_multipliers(self) -> bool:
        """The temperature and CQL alpha as softplus of a raw parameter (the release's), not exp."""
        return self.release_exact

    @property
    def concatenated_batches(self) -> bool:
        """Online and offline rows concatenated, then split into the UTD minibatches, as the release
        (wsrl/data/buffer.py ``sample_mixed``)."""
        return self.release_exact


@dataclass
class AgentConfig:
    """Loss hyperparameters of every algorithm; each algorithm reads the fields it needs."""

    discount: float = 0.99
    """Discount factor gamma."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic ensemble."""
    temperature_lr: float = 1e-4
    """Adam learning rate of the SAC temperature."""
    value_lr: float = 3e-4
    """Adam learning rate of the IQL value net."""
    tau: float = 0.005
    """Soft target update rate, applied after every critic step."""
    init_temperature: float = 1.0
    """Initial SAC temperature alpha."""
    target_entropy: float | None = None
    """Target entropy for the temperature; None means -|A|."""
    backup_entropy: bool = False
    """Subtract alpha * log pi(a'|s') in the TD target."""
    cql_n_actions: int = 10
    """Sampled actions per state, from each of uniform, pi(s) and pi(s') (and the next actions of the max-target backup)."""
    cql_alpha: float = 5.0
    """Weight of the conservative penalty (initial value when Lagrange-tuned)."""
    cql_lagrange: bool = False
    """Tune the CQL alpha by dual gradient descent towards cql_target_gap."""
    cql_target_gap: float = 0.8
    """Target value of logsumexp Q - Q(data) when cql_lagrange is on."""
    cql_alpha_lr: float = 3e-4
    """Adam learning rate of the Lagrange-tuned CQL alpha."""
    cql_importance_sample: bool = True
    """Importance-weight the sampled actions by their proposal densities."""
    max_target_backup: bool = True
    """TD target: for each of cql_n_actions sampled next actions the min over the chosen target critics, then the max over actions."""
    cql_temperature: float = 1.0
    """Temperature of the logsumexp in the CQL penalty."""
    sparse_reward: bool | None = None
    """Cal-QL: a trajectory that never succeeds gets r/(1-gamma) as return-to-go at every step; None takes the env suite's."""
    expectile: float = 0.7
    """IQL expectile tau of the value loss."""
    iql_temperature: float = 3.0
    """IQL inverse temperature beta of the advantage-weighted actor."""
    iql_max_weight: float = 100.0
    """Clip of exp(beta * advantage) in the IQL actor loss."""


@dataclass
class RunConfig:
    """What every training command shares: where, how long, how it is watched."""

    env: str = ""
    """Gymnasium id (e.g. Hopper-v5) or D4RL name (e.g. hopper-medium-v2)."""
    out: str = ""
    """Run directory for checkpoints, TensorBoard events, metrics.jsonl and config.json."""
    seed: int = 0
    """Seed of torch, numpy and the environments (evaluation start states: from (seed, step), docs/reference.md)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    reward_scale: float | None = None
    """Rewards are trained on as reward * reward_scale + reward_bias; None takes the env suite's (evaluation is unscaled)."""
    reward_bias: float | None = None
    """See reward_scale; None takes the env suite's."""
    eval_every: int = 20_000
    """Evaluate the deterministic policy every this many steps (and at the end)."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    log_every: int = 1_000
    """Fetch metrics from the device and log them every this many steps."""
    save_every: int = 50_000
    """Write a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    overwrite: bool = False
    """Replace a different run already in --out."""
    compile: bool = False
    """torch.compile the update step (slow to compile on small CPUs; a few percent faster there)."""
    cuda_graph: bool = True
    """On CUDA, capture the whole per-step update as one CUDA graph (CUDA only; CPU has no graphs)."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default (one per physical core). Use fewer when other busy processes share the cores."""
    precision: Precision = "fp32"
    """Precision of the hidden layers' matmuls (critics, actor, value net): fp32, or bf16 where the hardware multiplies
    bf16 natively (CPUs with avx512_bf16/amx_bf16, CUDA sm80+; elsewhere it says so and runs fp32). Weights, Adam,
    output heads, losses and targets stay fp32 (docs/performance.md). bf16-last-fp32: bf16 but the last hidden layer
    (as fast as fp32 at 2 hidden layers; the boundary the learning comparison tested). Checkpoints load in any precision."""
    lr_schedule: Schedule = "constant"
    """Learning rate over the updates, counted from the first (after the warmup): constant; rewarm (linear from
    lr_warmup_start x lr to lr over lr_warmup_updates); wsd (rewarm, then linear decay to lr_final x lr over the
    last lr_decay_fraction of the run's updates). Scales each optimizer's own lr (docs/dip.md)."""
    lr_warmup_start: float = 0.0
    """rewarm/wsd: the ramp's start, a fraction of the lr (update k of the ramp, from 1, is at start + (1 - start) k / lr_warmup_updates)."""
    lr_warmup_updates: int = 1_000
    """rewarm/wsd: updates of the linear ramp to the full lr (wsd: 0 = no ramp)."""
    lr_decay_fraction: float = 0.2
    """wsd: the last fraction of the run's updates over which the lr decays linearly."""
    lr_final: float = 0.0
    """wsd: the lr at the last update, as a fraction of the lr."""
    lr_schedule_on: tuple[OptimizerName, ...] = OPTIMIZERS
    """The optimizers the schedule applies to; the others keep their constant lr."""
    wandb_project: str = ""
    """Also log every scalar and the run's config to this Weights & Biases project (pip install 'wsrl[wandb]');
    empty: TensorBoard and metrics.jsonl only. WANDB_MODE=offline keeps the W&B run in RUN/wandb/."""
    wandb_entity: str = ""
    """W&B team or user the run goes to (with --wandb-project; empty: your default entity)."""
    wandb_group: str = ""
    """W&B group of the run, e.g. one per sweep (with --wandb-project)."""
    wandb_tags: tuple[str, ...] = ()
    """W&B tags of the run (with --wandb-project)."""

    def check(self) -> None:
        """One clear line for the first bad flag, before anything is read or written."""
        _check_positive(steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every,
                        eval_episodes=self.eval_episodes, log_every=self.log_every, save_every=self.save_every)
        check_schedule(self)
        if not self.wandb_project:
            for flag, value in (("--wandb-entity", self.wandb_entity), ("--wandb-group", self.wandb_group),
                                ("--wandb-tags", self.wandb_tags)):
                if value:
                    raise UserError(f"{flag}: only with --wandb-project (the Weights & Biases project to log to)")
        elif importlib.util.find_spec("wandb") is None:
            raise UserError(f"--wandb-project {self.wandb_project}: needs wandb (pip install 'wsrl[wandb]')")


def _check_positive(**values: int) -> None:
    for flag, value in values.items():
        if value <= 0:
            raise UserError(f"--{flag.replace('_', '-')}: must be positive, got {value}")


@dataclass
class PretrainConfig(RunConfig):
    """Offline pretraining: `wsrl pretrain`."""

    dataset: str = ""
    """D4RL-schema HDF5 path, D4RL name (looked up in $D4RL_DATASET_DIR or ~/.d4rl/datasets), or minari:<id>."""
    recipe: RecipeName = "wsrl"
    """Named method, set per domain as the authors' release runs it (configs/<recipe>.json, docs/recipes.md):
    wsrl (CQL/Cal-QL with a 10-critic ensemble, then warmup and SAC at UTD 4); wsrl-no-warmup, wsrl-retain
    (half of every batch offline data), wsrl-append (offline data in the buffer), which fine-tune a wsrl
    pretraining; the baselines cql-finetune, calql-finetune, iql-finetune (own pretraining: 2 critics, UTD 1,
    no warmup; iql-finetune is the release's IQL model, not the ensemble IQL that wsrl --algo iql trains);
    rlpd (no pretraining: `wsrl finetune --recipe rlpd --dataset D`). Saved in the checkpoint."""
    algo: Algo = "cql"
    """Offline algorithm; the recipe picks it per domain (--algo X keeps the recipe's networks with X's losses)."""
    steps: int = 250_000
    """Gradient steps of offline training."""
    batch_size: int = 256
    """Minibatch size."""
    bc_steps: int = 0
    """CQL / Cal-QL: the first bc_steps steps train the actor by behaviour cloning (log-likelihood of the
    data actions plus the entropy bonus) instead of on Q; the critic trains as usual. The warm start of
    the original CQL code (policy_eval_start) and CORL (bc_steps); 0 = off, as in the WSRL release."""
    download: bool = False
    """Allow minari to download a dataset that is not on this machine."""
    resume: str = ""
    """Run directory to continue from its newest complete checkpoint (its config.json is the default for every flag)."""
    net: NetConfig = field(default_factory=NetConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def check(self) -> None:
        super().check()
        if self.bc_steps < 0:
            raise UserError(f"--bc-steps: must be >= 0, got {self.bc_steps}")
        if self.bc_steps and self.algo == "iql":
            raise UserError("--bc-steps: applies to cql and calql; IQL's actor already is advantage-weighted behaviour cloning")


@dataclass
class FinetuneConfig(RunConfig):
    """Online fine-tuning: `wsrl finetune`."""

    checkpoint: str = ""
    """Pretraining run directory (or one of its checkpoints/step_* folders) to start from."""
    recipe: RecipeName = "wsrl"
    """Named method (see `wsrl pretrain --help`; docs/recipes.md): its online settings for the env's domain.
    Default: the checkpoint's recipe. It must fine-tune the checkpoint's pretraining (wsrl-no-warmup,
    wsrl-retain, wsrl-append fine-tune a wsrl one); --online-algo X alone takes X's baseline online settings."""
    from_scratch: bool = False
    """No checkpoint: freshly initialised networks (SAC; with --offline-ratio 0.5 this is RLPD, --recipe rlpd)."""
    resume: str = ""
    """Fine-tuning run directory to continue from its newest complete checkpoint, replay buffer included."""
    online_algo: OnlineAlgo = "sac"
    """Online loss: sac (WSRL) or keep training with the pretraining loss."""
    steps: int = 500_000
    """Online env steps in total, warmup included."""
    warmup_steps: int = 5_000
    """Env steps with the frozen pretrained policy (sampled actions) before any update. Updates also wait
    until the buffer holds one batch of online rows, as in the release."""
    warmup_actions: Literal["policy", "uniform"] | None = None
    """Warmup actions from the policy (sampled) or uniform at random; None: uniform with --from-scratch, else policy."""
    utd: int = 4
    """Critic updates per env step; the batch is split into this many minibatches."""
    batch_size: int = 1024
    """Transitions per env step's update: utd critic minibatches of batch_size/utd, one actor step on all."""
    num_envs: int = 1
    """Vectorised training envs stepped together with one batched policy forward."""
    buffer_capacity: int = 2_000_000
    """Replay buffer size (device-resident, float32)."""
    dataset: str = ""
    """Offline dataset, needed by --offline-ratio and --offline-append."""
    offline_ratio: float = 0.0
    """Fraction of every batch drawn from the offline data (0 = WSRL)."""
    offline_append: bool = False
    """Put the offline data into the replay buffer before online training."""
    actor_update_delay: int = 0
    """Critic first: the first this many updates (after the warmup) train the critic and temperature only;
    the actor's optimizer does not step. 0 = off."""
    sample_finished_episodes: bool = False
    """Sample only transitions of episodes that have ended (their Monte-Carlo returns are known), and wait
    one time limit of steps before the first update: the release's online Cal-QL."""
    download: bool = False
    """Allow minari to download a dataset that is not on this machine."""
    net: NetConfig = field(default_factory=NetConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def check(self) -> None:
        super().check()
        _check_positive(utd=self.utd, num_envs=self.num_envs, buffer_capacity=self.buffer_capacity)
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise UserError(f"--warmup-steps {self.warmup_steps}: must be at least 0 and less than --steps {self.steps}")
        if self.batch_size % self.utd:
            raise UserError(f"--batch-size {self.batch_size}: must be divisible by --utd {self.utd}")
        if not 0.0 <= self.offline_ratio <= 1.0:
            raise UserError(f"--offline-ratio {self.offline_ratio}: must be in [0, 1]")
        if (self.offline_ratio > 0 or self.offline_append) and not self.dataset:
            raise UserError("--offline-ratio/--offline-append: need --dataset")
        if self.actor_update_delay < 0:
            raise UserError(f"--actor-update-delay {self.actor_update_delay}: must be at least 0")


@dataclass
class CollectConfig:
    """Roll out behaviour policies and write a dataset: `wsrl collect`."""

    env: str = ""
    """Gymnasium id (e.g. Hopper-v5) or D4RL name of the env to collect in."""
    policy: tuple[str, ...] = ("random",)
    """Behaviour source(s): random, a shipped policy (e.g. hopper-medium), a wsrl run or checkpoint directory, or replay:RUN_DIR (a fine-tuning run's replay buffer). Several make a mixture."""
    steps: tuple[int, ...] = (100_000,)
    """Transitions to take from each source (one number per --policy, or one for all)."""
    out: str = ""
    """Output .hdf5 path (D4RL schema), or the dataset id (e.g. wsrl/hopper-medium-v0) with --format minari."""
    format: Literal["d4rl", "minari"] = "d4rl"
    """d4rl: one HDF5 file in D4RL's schema; minari: a Minari dataset under $MINARI_DATASETS_PATH."""
    deterministic: bool = False
    """Act with tanh(mean) instead of sampling from the policy."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to every policy action (then clipped to [-1, 1])."""
    num_envs: int = 8
    """Vectorised envs stepped together with one batched policy forward."""
    max_episode_steps: int = 0
    """Time limit of the collection envs; 0 keeps the env's own (1000 for MuJoCo locomotion)."""
    seed: int = 0
    """Seed of the envs, the policy's sampling and the noise."""
    device: str = "cpu"
    """Device the policy runs on."""
    threads: int = 1
    """torch CPU threads for the policy; 1 is fastest for small per-step batches (0 keeps torch's default)."""
    overwrite: bool = False
    """Replace an existing output."""


@dataclass
class PlotConfig:
    """Plot evaluation learning curves of wsrl runs: `wsrl plot RUN_DIR... --out fig.png`."""

    runs: tyro.conf.Positional[tuple[str, ...]]
    """Run directories (pretrain or finetune); a fine-tuning run pulls in its pretraining run's curve."""
    out: str = "learning_curve.png"
    """Output image path (.png, .pdf or .svg)."""
    labels: tuple[str, ...] = ()
    """One legend label per run; runs sharing a label are averaged. Default: directory name without a seed suffix (a sweep's <env>/<method>/seed<k>: the method)."""
    metric: str = "auto"
    """Metric to plot: auto (eval/normalized_score when present, else eval/success_rate, else eval/return) or a metrics.jsonl key."""
    title: str = ""
    """Figure title."""


@dataclass
class EvaluateConfig:
    """Evaluate a trained policy under training's protocol: `wsrl evaluate RUN_OR_CHECKPOINT`."""

    source: tyro.conf.Positional[str]
    """A wsrl run directory (its newest checkpoint), a checkpoints/step_* folder, or a shipped policy name."""
    episodes: int = 0
    """Episodes, side by side; 0 takes the run's --eval-episodes (20 for a shipped policy)."""
    sampled: bool = False
    """Sample actions from the policy instead of the deterministic tanh(mean)."""
    seed: int | None = None
    """Run seed of the start states (training's rule); default the run's --seed (0 for a shipped policy)."""
    step: int | None = None
    """Replay the start states of the evaluation logged at this step; default the checkpoint's step (0 for a shipped policy)."""
    video: str = ""
    """Also write the first episode to this .mp4 (needs wsrl[video] and MUJOCO_GL=osmesa or egl)."""
    device: str = "cpu"
    """Device the policy runs on."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    precision: Precision | None = None
    """Precision of the actor's hidden layers (see `wsrl finetune --help`); default the run's (fp32 for a shipped
    policy), which reproduces the run's logged evaluations."""


@dataclass
class ExportConfig:
    """Export a run's deterministic actor to run without wsrl: `wsrl export RUN --format onnx|pt2 --out FILE`."""

    source: tyro.conf.Positional[str]
    """A wsrl run directory (its newest checkpoint), a checkpoints/step_* folder, or a shipped policy name."""
    format: ExportFormat = "onnx"
    """onnx (needs wsrl[export]), pt2 (torch.export program), or policy (a shipped-policy folder for wsrl/policies/)."""
    out: str = ""
    """Output file (.onnx, .pt2) or, for --format policy, folder."""
    overwrite: bool = False
    """Replace an existing output."""


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict, where: str) -> Any:
    """Build ``cls`` from a (possibly partial) dict, refusing unknown keys by name; a field whose
    type is a config dataclass (net, agent) is built from its nested dict."""
    hints = typing.get_type_hints(cls)  # the field types themselves, not their annotation strings
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise UserError(f"{where}: unknown field '{key}' for {cls.__name__}")
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            value = from_dict(hints[key], value, where)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def merge_dicts(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested dicts (net, agent) are merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def merge(cfg: Any, overrides: dict, where: str) -> Any:
    """Return a copy of ``cfg`` with the fields in ``overrides`` (nested dicts for net/agent)."""
    return from_dict(type(cfg), merge_dicts(to_dict(cfg), overrides), where)


@dataclass
class SweepConfig:
    """Run envs x methods x seeds as Ray tasks: `wsrl sweep SWEEP_FILE --out DIR` (docs/sweep.md)."""

    file: Annotated[tyro.conf.Positional[str], tyro.conf.arg(metavar="SWEEP_FILE")] = ""
    """Sweep file (.toml; .yaml/.yml with PyYAML); may be left out when --envs and --methods are given."""
    out: str = ""
    """Root of the run tree: DIR/<env>/<method>/seed<k>, pretraining under DIR/<env>/_pretrain/."""
    envs: tuple[str, ...] = ()
    """Envs to run, replacing the file's: NAME (an env of the file, a Gymnasium id or a D4RL name) or NAME=DATASET."""
    methods: tuple[str, ...] = ()
    """Methods to run, replacing the file's: a method of the file or a recipe name."""
    seeds: tuple[int, ...] = ()
    """Seeds to run, replacing the file's."""
    pretrain_flags: str = ""
    """Flags added to every pretraining run, over the file's; with =: --pretrain-flags="--steps 8000 --eval-every 1000"."""
    finetune_flags: str = ""
    """Flags added to every fine-tuning run, over the file's; with =: --finetune-flags="--steps 30000"."""
    address: str = ""
    """Ray cluster to join (HOST:PORT, or auto for one started by `ray start` here); empty starts a Ray for this sweep."""
    connect_timeout: float = 60.0
    """Seconds to wait for the --address cluster to answer; past it the sweep stops with exit status 2."""
    cpus_per_run: int = 1
    """CPUs Ray reserves for each run; also the run's torch threads (--threads)."""
    gpus_per_run: float = 0.0
    """GPUs Ray reserves for each run (0.25: four runs share a GPU); 0 runs on CPU (--device cpu)."""
    max_concurrent: int = 0
    """At most this many runs at once; 0 = as many as the cluster's CPUs and GPUs fit."""
    dry_run: bool = False
    """Print each run's command (or that it is finished) and start nothing."""


@dataclass
class ReportConfig:
    """Tables and figures of fine-tuning runs across envs, methods and seeds: `wsrl report DIR... --out REPORT/`."""

    runs: Annotated[tyro.conf.Positional[tuple[str, ...]], tyro.conf.arg(metavar="DIR")]
    """Sweep directories or run directories; searched for fine-tuning runs."""
    out: str = "report"
    """Output folder (report.md, CSV tables, PNG figures); a previous report there is replaced."""
    resamples: int = 10_000
    """Stratified bootstrap resamples for the 95% confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap, so a report is reproducible."""
