"""Export a wsrl checkpoint's actor as a shipped behaviour policy (wsrl/policies/<name>/).

    python scripts/export_policy.py runs/behavior_hopper/checkpoints/step_000040000 hopper-medium \
        --command "wsrl finetune --from-scratch --env Hopper-v5 ..."

`wsrl export --format policy` with the measured returns added: over --episodes episodes, once
with deterministic (tanh-mean) actions and once with sampled actions, as `wsrl collect` uses by
default, both under `wsrl evaluate`'s protocol. They go, with the training command, into
policy.json next to actor.safetensors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wsrl.specs import normalized_score, resolve_env
from wsrl.evaluate import evaluate
from wsrl.policies import export_policy, read_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("name")
    p.add_argument("--command", required=True, help="the exact command that trained the checkpoint")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    policy = read_policy(args.checkpoint, args.checkpoint)
    spec = resolve_env(policy.env)
    actor = policy.actor(torch.device("cpu"), args.checkpoint)
    measured = {"command": args.command, "trained_steps": policy.description["step"],
                "measured_episodes": args.episodes, "ref_source": spec.ref_source,
                "measured_how": f"wsrl evaluate NAME --episodes {args.episodes} --seed {args.seed} [--sampled]: "
                                f"the start states of step 0 of a run seeded {args.seed}"}
    for prefix, deterministic in (("measured", True), ("measured_sampled", False)):
        torch.manual_seed(args.seed)
        result = evaluate(actor, spec, args.episodes, args.seed, 0, torch.device("cpu"), deterministic=deterministic)
        measured.update({f"{prefix}_return": result["eval/return"], f"{prefix}_return_std": result["eval/return_std"],
                         f"{prefix}_normalized_score": normalized_score(spec, result["eval/return"])})
    if args.note:
        measured["note"] = args.note
    out = Path(__file__).resolve().parent.parent / "wsrl" / "policies" / args.name
    export_policy(args.checkpoint, out, "policy", measured)
    print(json.dumps(measured, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
