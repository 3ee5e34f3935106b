"""Export a wsrl checkpoint's actor as a shipped behaviour policy (wsrl/policies/<name>/).

    python scripts/export_policy.py runs/behavior_hopper/checkpoints/step_000040000 hopper-medium \
        --command "wsrl finetune --from-scratch --env Hopper-v5 ..."

Measures the return over --episodes episodes twice (deterministic tanh-mean actions, and sampled
actions as `wsrl collect` uses by default) and records both, with the training command, in
policy.json next to actor.safetensors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from wsrl.checkpoint import load_checkpoint
from wsrl.collect import Episodes, export_policy, load_policy, rollout
from wsrl.envs import env_dims, make_env, normalized_score, resolve_env
from wsrl.train import evaluate


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
    meta, _, _ = load_checkpoint(args.checkpoint)
    spec = resolve_env(meta["env_id"])
    obs_dim, act_dim = env_dims(make_env(spec))
    actor, _ = load_policy(args.checkpoint, spec, obs_dim, act_dim, torch.device("cpu"), args.seed)
    det = evaluate(actor, spec, args.episodes, args.seed, torch.device("cpu"))
    # Sampled actions: every complete episode of 1000 * episodes steps in `episodes` envs (each env
    # finishes at least one episode: the time limit is 1000).
    eps = Episodes()
    rollout(spec, actor, 1000 * args.episodes, args.episodes, args.seed + 2000, False, 0.0, torch.device("cpu"), eps)
    sampled = [r for r, c in zip(eps.returns, eps.complete) if c]
    measured = {
        "measured_return": det["eval/return"], "measured_return_std": det["eval/return_std"],
        "measured_normalized_score": normalized_score(spec, det["eval/return"]),
        "measured_sampled_return": float(np.mean(sampled)), "measured_sampled_return_std": float(np.std(sampled)),
        "measured_sampled_normalized_score": normalized_score(spec, float(np.mean(sampled))),
        "measured_episodes": args.episodes, "measured_sampled_episodes": len(sampled),
        "measured_how": f"deterministic: wsrl.train.evaluate (tanh of mean, envs seeded {args.seed}+1000+i); "
                        f"sampled: all complete episodes in {1000 * args.episodes} steps of {args.episodes} envs seeded {args.seed + 2000}",
        "ref_source": spec.ref_source,
    }
    out = Path(__file__).resolve().parent.parent / "wsrl" / "policies" / args.name
    export_policy(args.checkpoint, out, measured, args.command, args.note)
    print(json.dumps(measured, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
