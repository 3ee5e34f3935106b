"""`make demo`: the whole WSRL method on Hopper-v5, on CPU, in minutes.

1. `wsrl collect`  a medium dataset with the shipped `hopper-medium` behaviour policy;
2. `wsrl pretrain` CQL on it (offline);
3. `wsrl finetune` WSRL: warmup rollouts of the frozen pretrained policy into a fresh buffer,
   then ensemble SAC online, without the offline data;
4. `wsrl plot`     the learning curve (offline and online on one axis) as a PNG;
5. a table of normalised scores: random policy, behaviour policy, after pretraining, after fine-tuning.

Every step is the real CLI, printed before it runs, so each line can be copied and scaled up.
The settings are far smaller than the published ones (see README "Demo") to fit 15 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

# Demo settings; the README's "Demo" section lists how they differ from the published defaults.
ENV = "Hopper-v5"
DATASET_STEPS = 50_000
NET = ["--critic-hidden", "128", "128", "--actor-hidden", "128", "128", "--ensemble-size", "4"]
PRETRAIN = ["--steps", "4000", "--batch-size", "256", "--cql-n-actions", "4", "--actor-lr", "3e-4",
            "--eval-every", "1000", "--save-every", "4000"]
FINETUNE = ["--steps", "15000", "--warmup-steps", "5000", "--utd", "2", "--batch-size", "512",
            "--actor-lr", "3e-4", "--eval-every", "1000", "--save-every", "12000"]
COMMON = ["--eval-episodes", "10", "--log-every", "500", "--device", "cpu", "--overwrite"]


def wsrl(*args: str) -> None:
    cmd = [sys.executable, "-m", "wsrl.cli", *args]
    print("\n$ wsrl " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"demo: `wsrl {args[0]}` failed with exit code {result.returncode}")


def final_score(run_dir: Path, last: int = 3) -> float:
    """Mean of the last ``last`` evaluations: a single Hopper evaluation of a policy that is still
    changing swings by 10+ points (one early fall ends an episode), so one point is not a score."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    scores = [r["eval/normalized_score"] for r in rows if "eval/normalized_score" in r]
    return sum(scores[-last:]) / len(scores[-last:])


def random_score(seed: int, episodes: int) -> float:
    """The uniform-random policy under the same evaluation protocol as the agents."""
    import torch

    from wsrl.collect import RandomActor
    from wsrl.envs import env_dims, make_env, resolve_env
    from wsrl.train import evaluate

    spec = resolve_env(ENV)
    _, act_dim = env_dims(make_env(spec))
    return evaluate(RandomActor(act_dim, seed), spec, episodes, seed, torch.device("cpu"))["eval/normalized_score"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--policy", default="hopper-medium", help="behaviour policy for the dataset")
    parser.add_argument("--threads", default="1", help="torch CPU threads for training (1 is fastest for these small nets)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"hopper-medium_seed{args.seed}.hdf5"
    pre, ft = out / f"pretrain_cql_seed{args.seed}", out / f"wsrl_seed{args.seed}"
    seed = ["--seed", str(args.seed)]
    threads = ["--threads", args.threads]

    wsrl("collect", "--env", ENV, "--policy", args.policy, "--steps", str(DATASET_STEPS), "--num-envs", "10",
         "--out", str(data), "--overwrite", *seed)
    t_collect = time.perf_counter()
    wsrl("pretrain", "--env", ENV, "--dataset", str(data), "--out", str(pre), "--algo", "cql",
         *NET, *PRETRAIN, *COMMON, *seed, *threads)
    t_pretrain = time.perf_counter()
    wsrl("finetune", "--env", ENV, "--checkpoint", str(pre), "--out", str(ft), *FINETUNE, *COMMON, *seed, *threads)
    t_finetune = time.perf_counter()
    fig = out / "learning_curve.png"
    wsrl("plot", str(ft), "--out", str(fig), "--title", f"WSRL demo: {ENV}, CQL pretraining -> WSRL fine-tuning")

    import h5py

    from wsrl.envs import normalized_score, resolve_env

    with h5py.File(data) as f:
        behaviour = normalized_score(resolve_env(ENV), float(f["metadata/mean_episode_return"][()]))
    scores = {"random policy": random_score(args.seed, 10), "behaviour policy (dataset episodes)": behaviour,
              "after CQL pretraining": final_score(pre), "after WSRL fine-tuning": final_score(ft)}
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nWSRL demo, {ENV}, seed {args.seed}: normalised score (D4RL hopper refs, x100; "
          f"deterministic policy, 10 episodes; trained policies: mean of the last 3 evaluations)")
    print(f"  {'':38s} score")
    for name, value in scores.items():
        print(f"  {name:38s} {value:6.1f}")
    print(f"  learning curve: {fig}   TensorBoard: tensorboard --logdir {out}")
    print(f"  wall time {minutes:.1f} min (collect {(t_collect - t0) / 60:.1f}, pretrain "
          f"{(t_pretrain - t_collect) / 60:.1f}, fine-tune {(t_finetune - t_pretrain) / 60:.1f})")
    (out / f"results_seed{args.seed}.json").write_text(json.dumps({**scores, "minutes": minutes}, indent=1) + "\n")
    ok = scores["after WSRL fine-tuning"] > scores["after CQL pretraining"] > scores["random policy"]
    print("  fine-tuned > pretrained > random: " + ("yes" if ok else "NO"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
