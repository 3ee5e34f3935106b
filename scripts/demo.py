"""`make demo`: WSRL's point on Hopper-v5, on CPU, in minutes — fine-tuning with and without warmup.

From one CQL checkpoint (the one shipped in ``wsrl/pretrained/hopper-medium-cql``, or with
``--pretrain`` one trained here from data collected with the shipped ``hopper-medium`` policy),
two fine-tuning runs start side by side, one thread each:

- **WSRL**: 5k warmup steps of the frozen pretrained policy into a fresh buffer, then ensemble SAC;
- **no warmup**: the same with no warmup: updates start once the buffer holds one batch (512 steps).

Then one figure with both curves (offline phase left of the hand-over, online right) and a table
of the metrics of ``wsrl.metrics`` (docs/design.md, "Metrics"): hand-over, dip, final, and the
behaviour policy evaluated under the hand-over's protocol (deterministic, the same 10 start
states). Every step is the real CLI, printed before it runs. The settings are far smaller than
the published ones (docs/demo.md) to fit 15 minutes on 2 CPU cores.

The shipped checkpoint is the last checkpoint of a pretraining run whose command and length were
fixed before it ran: seed 1 of the study in docs/results.md (its amendment says why not seed 0).
Nothing was chosen by its score. With the default --seed 1 the two fine-tuning runs are that
study's seed-1 `wsrl` and `no-warmup` runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

SHIPPED = "hopper-medium-cql"
"""The CQL checkpoint in wsrl/pretrained/; its pretrained.json records how it was made."""
ENV = "Hopper-v5"
BEHAVIOUR = "hopper-medium"
"""The shipped policy that collects the dataset."""
DATASET = ["--policy", BEHAVIOUR, "--steps", "50000", "--num-envs", "10"]
# The pretraining of the shipped checkpoint (its pretrained.json; the sweep scripts/study_results.toml,
# seed 1, on the data of collect seed 0): demo-sized networks, 20k CQL steps, its last checkpoint.
DATA_SEED, PRETRAIN_SEED = 0, 1
PRETRAIN = ["--recipe", "wsrl", "--algo", "cql", "--critic-hidden", "128", "128", "--actor-hidden", "128", "128", "--ensemble-size", "4",
            "--steps", "20000", "--batch-size", "256", "--cql-n-actions", "4", "--actor-lr", "3e-4",
            "--eval-every", "2500", "--save-every", "5000", "--keep-checkpoints", "10", "--eval-episodes", "10",
            "--log-every", "500", "--threads", "1"]
ONLINE_STEPS = 16_000
FINETUNE = ["--steps", str(ONLINE_STEPS), "--utd", "2", "--batch-size", "512", "--actor-lr", "3e-4", "--eval-every", "1000",
            "--eval-episodes", "10", "--log-every", "500", "--save-every", str(ONLINE_STEPS)]
RUNS = {"WSRL": ["--warmup-steps", "5000"], "no warmup": ["--warmup-steps", "0"]}
COMMON = ["--device", "cpu", "--overwrite"]


def show(args: list[str]) -> list[str]:
    print("\n$ wsrl " + " ".join(shlex.quote(a) for a in args), flush=True)
    return [sys.executable, "-m", "wsrl.cli", *args]


def wsrl(*args: str) -> None:
    result = subprocess.run(show(list(args)))
    if result.returncode != 0:
        sys.exit(f"demo: `wsrl {args[0]}` failed with exit code {result.returncode}")


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def finetune_side_by_side(checkpoint: str, out: Path, seed: int) -> dict[str, Path]:
    """Both fine-tuning runs at once, one thread each (two processes for two cores), logs to files."""
    runs, procs = {}, {}
    for name, flags in RUNS.items():
        run_dir = out / f"{name.replace(' ', '_').lower()}_seed{seed}"
        args = ["finetune", "--env", ENV, "--checkpoint", checkpoint, "--out", str(run_dir), *flags, *FINETUNE,
                *COMMON, "--seed", str(seed), "--threads", "1"]
        log = open(out / f"{run_dir.name}.log", "w")
        procs[name] = (subprocess.Popen(show(args), stdout=log, stderr=subprocess.STDOUT), log)
        runs[name] = run_dir
    print(f"\nboth running (logs: {out}/*_seed{seed}.log) ...", flush=True)
    while any(p.poll() is None for p, _ in procs.values()):
        time.sleep(30)
        print("  " + ", ".join(f"{name} {last_step(runs[name])}/{ONLINE_STEPS} steps" for name in runs), flush=True)
    for name, (proc, log) in procs.items():
        log.close()
        if proc.returncode != 0:
            sys.exit(f"demo: the {name} run failed with exit code {proc.returncode}; see {log.name}")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=PRETRAIN_SEED, help="seed of the fine-tuning runs")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--pretrain", action="store_true", help="collect data and pretrain CQL here instead of "
                        "starting from the shipped checkpoint (about 40 min more on 2 idle cores)")
    args = parser.parse_args()

    from wsrl.config import EvaluateConfig
    from wsrl.specs import normalized_score, resolve_env
    from wsrl.evaluate import evaluate_policy
    from wsrl.metrics import DIP_WINDOW, final_window_start, run_metrics

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = resolve_env(ENV)
    if args.pretrain:
        import h5py

        data, pre = out / f"hopper-medium_seed{DATA_SEED}.hdf5", out / f"pretrain_cql_seed{PRETRAIN_SEED}"
        wsrl("collect", "--env", ENV, *DATASET, "--out", str(data), "--overwrite", "--seed", str(DATA_SEED))
        wsrl("pretrain", "--env", ENV, "--dataset", str(data), "--out", str(pre), *PRETRAIN, *COMMON,
             "--seed", str(PRETRAIN_SEED))
        with h5py.File(data) as f:
            dataset_score = normalized_score(spec, float(f["metadata/mean_episode_return"][()]))
        checkpoint = str(pre)
        made = f"the last checkpoint (step {PRETRAIN[PRETRAIN.index('--steps') + 1]}) of the pretraining above"
    else:
        folder = resources.files("wsrl") / "pretrained" / SHIPPED
        record = json.loads((folder / "pretrained.json").read_text())
        dataset_score = record["dataset"]["normalized_score"]
        checkpoint = str(folder)
        made = f"{record['command']}\n  chosen: {record['chosen_by']}"
        print(f"demo: starting from the shipped CQL checkpoint {checkpoint}\n  made by: {made}")
    t_pre = time.perf_counter()
    runs = finetune_side_by_side(checkpoint, out, args.seed)
    t_ft = time.perf_counter()
    fig = out / f"demo_seed{args.seed}.png"
    wsrl("plot", *map(str, runs.values()), "--labels", *runs, "--out", str(fig),
         "--title", f"{ENV}: CQL, then fine-tuning with and without warmup (seed {args.seed})")

    # The behaviour policy under the hand-over's protocol: the start states of online step 0 of runs
    # seeded args.seed, deterministic actions, as many episodes.
    episodes = FINETUNE[FINETUNE.index("--eval-episodes") + 1]
    print(f"\n$ wsrl evaluate {BEHAVIOUR} --seed {args.seed} --step 0 --episodes {episodes}", flush=True)
    behaviour = evaluate_policy(EvaluateConfig(source=BEHAVIOUR, seed=args.seed, step=0, episodes=int(episodes),
                                               threads=1))["eval/normalized_score"]
    metrics = {name: run_metrics(run_dir) for name, run_dir in runs.items()}
    print(f"\nWSRL demo, {ENV}, seed {args.seed}: normalised score (D4RL reference returns, x100; deterministic "
          f"policy, 10 episodes per evaluation; wsrl.metrics)")
    print(f"  {'':12s} {'hand-over':>9s} {'dip':>14s} {'final':>7s}")
    for name, m in metrics.items():
        print(f"  {name:12s} {m.handover:9.1f} {m.dip:6.1f} ({m.dip_fraction:4.0%}) {m.final:7.1f}")
    print(f"  {'behaviour':12s} {behaviour:9.1f}   (the {BEHAVIOUR} policy that made the data, evaluated like the "
          f"hand-over: deterministic, the same {episodes} start states)")
    print(f"  the dataset's own episodes (sampled actions) average {dataset_score:.1f}")
    wsrl_dip, plain_dip = metrics["WSRL"].dip, metrics["no warmup"].dip
    print(f"  on this seed WSRL's dip is {'smaller' if wsrl_dip < plain_dip else 'not smaller'} than no warmup's "
          f"({wsrl_dip:.1f} vs {plain_dip:.1f} points); one seed is an illustration, the 5-seed study is docs/results.md")
    print(f"  hand-over: the pretrained policy at online step 0; dip: hand-over minus the lowest evaluation in the "
          f"{DIP_WINDOW // 1000}k steps after warmup; final: mean of the evaluations from online step "
          f"{final_window_start(ONLINE_STEPS) / 1000:g}k to {ONLINE_STEPS / 1000:g}k")
    minutes = (time.perf_counter() - t0) / 60
    print(f"  checkpoint: {made}")
    print(f"  figure: {fig}   TensorBoard: tensorboard --logdir {out}")
    print(f"  wall time {minutes:.1f} min ({'collect + pretrain ' + format((t_pre - t0) / 60, '.1f') + ', ' if args.pretrain else ''}"
          f"fine-tuning {(t_ft - t_pre) / 60:.1f})")
    results = {"seed": args.seed, "checkpoint": checkpoint, "checkpoint_made_by": made,
               "behaviour_same_protocol": behaviour, "dataset_episodes_score": dataset_score, "minutes": minutes,
               **{name: m.as_dict() for name, m in metrics.items()}}
    (out / f"results_seed{args.seed}.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
