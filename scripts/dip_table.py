"""The table of scripts/study_dip.toml: dip, final and AUC (wsrl/metrics.py) and the score 1k actor
updates after the actor starts, per variant, mean and spread over seeds, written into docs/dip.md between its table markers (and printed).

    python scripts/dip_table.py runs/study_dip/sweep/hopper --variants constant wsd --seeds 0 1 2 --doc docs/dip.md

It reads the sweep's run tree under one env, ``<env>/<variant>/seed<k>`` (a variant is a method of
the sweep). A run counts once it has finished (its evaluations reach its --steps, as for `wsrl
report`); the others are listed as missing, and the table says it is partial.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from wsrl.metrics import reached_its_steps, read_evaluations, run_metrics

START, END = "<!-- dip-table:start -->", "<!-- dip-table:end -->"
COLUMNS = (("handover", "hand-over"), ("dip", "dip"), ("dip_fraction", "dip / hand-over"), ("final", "final"),
           ("auc", "AUC"), ("actor_1k", "1k actor updates in"))
ACTOR_UPDATES = 1000


def actor_1k(run: Path) -> float:
    """The first evaluation at least ACTOR_UPDATES updates after the actor's first one (after the
    warmup and any --actor-update-delay; one env per step, so one update per env step): does the
    fall follow the actor's first updates, whatever the schedule?"""
    cfg = json.loads((run / "config.json").read_text())
    start = cfg["warmup_steps"] + cfg.get("actor_update_delay", 0) + ACTOR_UPDATES
    steps, values = read_evaluations(run)
    return next((v for s, v in zip(steps, values) if s >= start), float("nan"))


def spread(values: list[float], percent: bool = False) -> str:
    """mean ± sample standard deviation (and the range), over the seeds."""
    v = np.asarray(values) * (100 if percent else 1)
    unit = "%" if percent else ""
    if len(v) == 1:
        return f"{v[0]:.1f}{unit}"
    return f"{v.mean():.1f}{unit} ± {v.std(ddof=1):.1f} [{v.min():.1f}, {v.max():.1f}]"


def table(env_dir: Path, variants: list[str], seeds: list[str]) -> str:
    rows, per_seed, missing = [], [], []
    for variant in variants:
        metrics = {}
        for seed in seeds:
            run = env_dir / variant / f"seed{seed}"
            if (run / "metrics.jsonl").is_file() and reached_its_steps(run):
                metrics[seed] = {**run_metrics(run).as_dict(), "actor_1k": actor_1k(run)}
            else:
                missing.append(f"{variant}/seed{seed}")
        if not metrics:
            rows.append(f"| {variant} | 0 | " + " | ".join("–" for _ in COLUMNS) + " |")
            continue
        cells = [spread([m[key] for m in metrics.values()], percent=key == "dip_fraction") for key, _ in COLUMNS]
        rows.append(f"| {variant} | {len(metrics)} | " + " | ".join(cells) + " |")
        for seed, m in metrics.items():
            per_seed.append(f"| {variant} | {seed} | " + " | ".join(
                f"{100 * m[key]:.0f}%" if key == "dip_fraction" else f"{m[key]:.1f}" for key, _ in COLUMNS) + " |")
    header = "| " + " | ".join(name for _, name in COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(COLUMNS)
    lines = []
    if missing:
        lines += [f"**Partial:** {len(missing)} of {len(variants) * len(seeds)} runs have not finished "
                  f"({', '.join(missing)}).", ""]
    lines += ["Mean ± sample standard deviation [min, max] over the finished seeds (one value: one seed).", "",
              "| variant | seeds " + header, rule, *rows, "", "Per seed:", "",
              "| variant | seed " + header, rule, *per_seed]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_dir", type=Path, help="a sweep's env folder, e.g. runs/study_dip/sweep/hopper")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", required=True)
    parser.add_argument("--doc", type=Path, help="markdown file whose table markers receive the table")
    args = parser.parse_args()
    text = table(args.env_dir, args.variants, args.seeds)
    print(text)
    if args.doc:
        if not args.doc.is_file():
            sys.exit(f"dip_table.py: --doc {args.doc}: no such file")
        doc = args.doc.read_text()
        if START not in doc or END not in doc:
            sys.exit(f"dip_table.py: --doc {args.doc}: has no {START} ... {END} markers")
        head, rest = doc.split(START, 1)
        args.doc.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
