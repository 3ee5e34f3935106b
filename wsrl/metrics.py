"""The metrics of one fine-tuning run, defined once for every report, demo and study (docs/design.md, "Metrics").

Steps are online env steps counted from the start of fine-tuning; the points are the
deterministic-policy evaluations logged by `wsrl finetune` (``eval/*`` in ``metrics.jsonl``).

- **hand-over**: the evaluation at online step 0, i.e. the pretrained policy;
- **dip**: hand-over minus the lowest evaluation in the first ``DIP_WINDOW`` online steps after the
  warmup ends (points of the metric; also as a fraction of the hand-over);
- **final**: the mean of the evaluations in the last ``FINAL_WINDOW`` online steps, or in the last
  half of the run when it is shorter than ``2 * FINAL_WINDOW``;
- **AUC**: the mean evaluation over the online phase (trapezoidal, divided by its length).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wsrl.errors import UserError

DIP_WINDOW = 10_000
FINAL_WINDOW = 10_000


@dataclass(frozen=True)
class OnlineMetrics:
    handover: float
    dip: float
    """NaN when no evaluation falls in the dip window (e.g. a run that ends inside its warmup)."""
    dip_fraction: float
    """dip / |hand-over|; NaN when the hand-over is 0."""
    final: float
    auc: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def final_window_start(total_steps: float) -> float:
    """The first online step of the window ``final`` averages over."""
    return total_steps - FINAL_WINDOW if total_steps >= 2 * FINAL_WINDOW else total_steps / 2


def online_metrics(steps, values, warmup_steps: int, total_steps: int | None = None) -> OnlineMetrics:
    """Metrics of one run from its evaluation points. ``total_steps`` is the run's length (its
    ``--steps``); it defaults to the last evaluated step."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    if len(steps) == 0 or steps[0] != 0:
        raise ValueError("the evaluations must include online step 0 (the hand-over)")
    total = float(total_steps if total_steps is not None else steps[-1])
    handover = float(values[0])

    in_dip = (steps > warmup_steps) & (steps <= warmup_steps + DIP_WINDOW)
    dip = handover - float(values[in_dip].min()) if in_dip.any() else float("nan")
    dip_fraction = dip / abs(handover) if handover != 0 else float("nan")

    in_final = steps >= final_window_start(total)
    final = float(values[in_final].mean()) if in_final.any() else float(values[-1])

    # Trapezoids by hand: np.trapezoid is NumPy >= 2 only, np.trapz is deprecated there.
    area = float(((values[1:] + values[:-1]) / 2 * np.diff(steps)).sum())
    auc = area / steps[-1] if steps[-1] > 0 else handover
    return OnlineMetrics(handover, dip, dip_fraction, final, auc)


def read_evaluations(run_dir: str | Path, metric: str = "eval/normalized_score") -> tuple[list[int], list[float]]:
    """The ``metric`` evaluations of a fine-tuning run, by online step."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a wsrl run directory)")
    points: dict[int, float] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by an interrupted write
        if isinstance(row.get(metric), (int, float)):
            points[int(row["step"])] = float(row[metric])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def reached_its_steps(run_dir: str | Path) -> bool:
    """A run's evaluations reach its --steps (config.json): it finished, whether or not its
    checkpoints were kept (every run evaluates at its last step)."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    steps, _ = read_evaluations(run_dir, "eval/return")
    return bool(steps) and steps[-1] >= config["steps"]


def run_metrics(run_dir: str | Path, metric: str = "eval/normalized_score") -> OnlineMetrics:
    """`online_metrics` of a fine-tuning run directory, with its warmup and length from config.json."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{run_dir}: no config.json (not a wsrl run directory)")
    config = json.loads(config_path.read_text())
    if config.get("kind") != "finetune":
        raise UserError(f"{run_dir}: not a fine-tuning run (the metrics are of the online phase)")
    steps, values = read_evaluations(run_dir, metric)
    if not steps:
        raise UserError(f"{run_dir}: metrics.jsonl has no '{metric}' evaluations")
    try:
        return online_metrics(steps, values, config["warmup_steps"], config["steps"])
    except ValueError as e:
        raise UserError(f"{run_dir}: {e}") from None
