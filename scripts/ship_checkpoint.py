"""Ship a pretraining run's last checkpoint as the demo's (``wsrl/pretrained/<name>/``).

It copies the run's newest checkpoint, its config.json and its metrics.jsonl up to that step
(the offline curve `wsrl plot` draws before the online one), and writes ``pretrained.json``: how
it was made, how it was chosen, the dataset, and the behaviour policy evaluated under the
hand-over's protocol (deterministic, the start states of online step 0 of a run with the same
seed). No evaluation is used to choose anything here: the run's last checkpoint is shipped.

    python scripts/ship_checkpoint.py runs/study/sweep/hopper/_pretrain/wsrl/seed1 \\
        --dataset runs/study/hopper-medium-50k.hdf5 --commit 6ac5f71 --chosen-by "..." --command "..."
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wsrl.checkpoint import checkpoint_step, list_checkpoints  # noqa: E402
from wsrl.config import EvaluateConfig  # noqa: E402
from wsrl.evaluate import evaluate_policy  # noqa: E402
from wsrl.specs import normalized_score, resolve_env  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a finished `wsrl pretrain` run")
    p.add_argument("--dataset", type=Path, required=True, help="the HDF5 file it pretrained on (from wsrl collect)")
    p.add_argument("--behaviour", default="hopper-medium", help="the shipped policy that collected the dataset")
    p.add_argument("--commit", required=True, help="the wsrl commit the run was made at")
    p.add_argument("--command", required=True, help="the commands that made the dataset and the run")
    p.add_argument("--chosen-by", required=True, help="how this run and checkpoint were chosen, fixed before it ran")
    p.add_argument("--name", default="hopper-medium-cql")
    args = p.parse_args()

    checkpoints = list_checkpoints(args.run)
    if not checkpoints:
        sys.exit(f"ship_checkpoint: {args.run} has no checkpoint")
    last = checkpoints[-1]
    step = checkpoint_step(last)
    config = json.loads((args.run / "config.json").read_text())
    if config.get("kind") != "pretrain" or step != config["steps"]:
        sys.exit(f"ship_checkpoint: {args.run} is not a finished pretraining run (last checkpoint {step})")
    spec = resolve_env(config["env"])
    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    evaluations = {r["step"]: r for r in rows if "eval/return" in r}
    with h5py.File(args.dataset) as f:
        meta = f["metadata"]
        dataset = {"transitions": int(meta["num_transitions"][()]), "episodes": int(meta["num_episodes"][()]),
                   "mean_episode_return": float(meta["mean_episode_return"][()])}
    dataset["normalized_score"] = normalized_score(spec, dataset["mean_episode_return"])
    dataset["how"] = "the dataset's own episodes (sampled actions), as `wsrl collect` recorded them"
    behaviour = evaluate_policy(EvaluateConfig(source=args.behaviour, seed=config["seed"], step=0,
                                               episodes=int(config["eval_episodes"]), threads=1))
    own = evaluations[step]
    record = {
        "what": f"CQL pretrained on {dataset['transitions']} transitions of the shipped {args.behaviour} policy, at the "
                f"demo's sizes; the checkpoint `make demo` fine-tunes",
        "command": args.command,
        "wsrl_commit": args.commit,
        "chosen_by": args.chosen_by,
        "dataset": dataset,
        "behaviour_same_protocol": {
            "normalized_score": behaviour["eval/normalized_score"], "return": behaviour["eval/return"],
            "how": f"wsrl evaluate {args.behaviour} --seed {config['seed']} --step 0 --episodes {config['eval_episodes']}: "
                   f"deterministic, the start states of online step 0 of a run seeded {config['seed']}"},
        "measured": {
            "step": step, "eval_return": own["eval/return"], "eval_return_std": own["eval/return_std"],
            "eval_normalized_score": own.get("eval/normalized_score"),
            "how": f"the run's own evaluation at step {step} ({config['eval_episodes']} deterministic episodes, the start "
                   f"states of step {step} of a run seeded {config['seed']}); `wsrl evaluate wsrl/pretrained/{args.name}` "
                   f"reproduces it",
            "offline_curve": {str(s): round(r.get("eval/normalized_score", r["eval/return"]), 1)
                              for s, r in sorted(evaluations.items())}},
    }
    out = REPO / "wsrl" / "pretrained" / args.name
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    shutil.copytree(last, tmp / "checkpoints" / last.name)
    shutil.copy(args.run / "config.json", tmp / "config.json")
    (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
    (tmp / "pretrained.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
