"""`make demo`: the whole WSRL method on Hopper-v5, on CPU, in minutes.

1. `wsrl collect`  a medium dataset with a shipped behaviour policy (`hopper-medium`);
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
DATASET_STEPS = 50_000
NET = ["--critic-hidden", "128", "128", "--actor-hidden", "128", "128", "--ensemble-size", "4"]
# tau 0.02 offline: Q-values propagate faster through the target network, so 8k CQL steps hand
# over a critic near the data's returns (Q mean 231 on seed 0, vs 111 with the published 0.005).
PRETRAIN = ["--steps", "8000", "--batch-size", "256", "--cql-n-actions", "4", "--actor-lr", "3e-4",
            "--tau", "0.02", "--eval-every", "1000", "--save-every", "8000"]
# The agent settings carry over from the checkpoint, so fine-tuning sets tau back to the published 0.005.
FINETUNE = ["--steps", "35000", "--warmup-steps", "5000", "--utd", "2", "--batch-size", "512",
            "--actor-lr", "3e-4", "--tau", "0.005", "--eval-every", "1000", "--save-every", "35000"]
FINAL_WINDOW = 10_000
"""The fine-tuned score is the mean of the evaluations in the last FINAL_WINDOW online steps."""
COMMON = ["--eval-episodes", "10", "--log-every", "500", "--device", "cpu", "--overwrite"]


def wsrl(*args: str) -> None:
    cmd = [sys.executable, "-m", "wsrl.cli", *args]
    print("\n$ wsrl " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"demo: `wsrl {args[0]}` failed with exit code {result.returncode}")


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["eval/normalized_score"]) for r in rows if "eval/normalized_score" in r]


def pretrained_score(run_dir: Path) -> float:
    """The evaluation of the checkpoint handed to fine-tuning (a fixed policy: one evaluation)."""
    return evaluations(run_dir)[-1][1]


def finetuned_score(run_dir: Path) -> float:
    """Mean over the last FINAL_WINDOW steps: a Hopper policy that is still learning swings by
    10-40 points between evaluations (one bad update and all 10 episodes fall early), so a
    single final evaluation would be a lottery; the window includes the dips."""
    evals = evaluations(run_dir)
    last = [score for step, score in evals if step > evals[-1][0] - FINAL_WINDOW]
    return sum(last) / len(last)


def random_score(env: str, seed: int, episodes: int) -> float:
    """The uniform-random policy under the same evaluation protocol as the agents."""
    import torch

    from wsrl.collect import RandomActor
    from wsrl.envs import env_dims, make_env, resolve_env
    from wsrl.train import evaluate

    spec = resolve_env(env)
    _, act_dim = env_dims(make_env(spec))
    return evaluate(RandomActor(act_dim, seed), spec, episodes, seed, torch.device("cpu"))["eval/normalized_score"]


def policy_env(policy: str) -> str:
    """The env a shipped behaviour policy was trained on."""
    from wsrl.collect import shipped_policies, shipped_policy_info

    if policy not in shipped_policies():
        sys.exit(f"demo: --policy {policy}: not a shipped policy (known: {', '.join(shipped_policies())})")
    return shipped_policy_info(policy)["env_id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--policy", default="hopper-medium", help="behaviour policy for the dataset")
    parser.add_argument("--threads", default="2", help="torch CPU threads for training; fixed (not the core count) so a "
                        "seed gives the same numbers on any machine; use 1 when running two demos side by side")
    args = parser.parse_args()

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = policy_env(args.policy)
    data = out / f"{args.policy}_seed{args.seed}.hdf5"
    pre, ft = out / f"pretrain_cql_seed{args.seed}", out / f"wsrl_seed{args.seed}"
    seed = ["--seed", str(args.seed)]
    threads = ["--threads", args.threads]

    wsrl("collect", "--env", env, "--policy", args.policy, "--steps", str(DATASET_STEPS), "--num-envs", "10",
         "--out", str(data), "--overwrite", *seed)
    t_collect = time.perf_counter()
    wsrl("pretrain", "--env", env, "--dataset", str(data), "--out", str(pre), "--algo", "cql",
         *NET, *PRETRAIN, *COMMON, *seed, *threads)
    t_pretrain = time.perf_counter()
    wsrl("finetune", "--env", env, "--checkpoint", str(pre), "--out", str(ft), *FINETUNE, *COMMON, *seed, *threads)
    t_finetune = time.perf_counter()
    fig = out / "learning_curve.png"
    wsrl("plot", str(ft), "--out", str(fig), "--title", f"WSRL demo: {env}, CQL pretraining -> WSRL fine-tuning")

    import h5py

    from wsrl.envs import normalized_score, resolve_env

    with h5py.File(data) as f:
        behaviour = normalized_score(resolve_env(env), float(f["metadata/mean_episode_return"][()]))
    scores = {"random policy": random_score(env, args.seed, 10), "behaviour policy (dataset episodes)": behaviour,
              "after CQL pretraining": pretrained_score(pre), "after WSRL fine-tuning": finetuned_score(ft)}
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nWSRL demo, {env}, seed {args.seed}: normalised score (D4RL reference returns, x100; "
          f"deterministic policy, 10 episodes; fine-tuned: mean of the evaluations in the last {FINAL_WINDOW} steps)")
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
