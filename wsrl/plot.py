"""`wsrl plot`: evaluation learning curves of runs, offline and online phases on one axis.

Each run directory's ``metrics.jsonl`` gives the ``eval/*`` points. A fine-tuning run whose
``--checkpoint`` points at a pretraining run that still exists gets that run's offline curve in
front of its own: offline points sit at negative x (gradient steps before the end of pretraining),
online points at their env step, and x = 0, where the pretrained policy is handed over, is marked.
Runs sharing a label (by default the directory name without a trailing ``seed<N>``/``s<N>``; for a
``seed<N>`` folder of `wsrl sweep`'s tree, ``<env>/<method>/seed<N>``, its method) are drawn as their
mean with a shaded ±1 std band.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from wsrl.checkpoint import checkpoint_step, list_checkpoints
from wsrl.config import PlotConfig
from wsrl.errors import UserError


SEED_SUFFIX = re.compile(r"[_\-.]?(seed|s)[_\-]?\d+$")
SEED_DIR = re.compile(r"^seed\d+$")
"""A run folder of `wsrl sweep`'s tree, ``<env>/<method>/seed<k>``: its parent names the method."""


def default_label(run_dir: Path) -> str:
    run_dir = run_dir.resolve()
    if SEED_DIR.match(run_dir.name):  # so `wsrl plot DIR/<env>/*/seed*` averages each method's seeds
        return run_dir.parent.name
    return SEED_SUFFIX.sub("", run_dir.name) or run_dir.name


def read_evals(run_dir: Path, metric: str) -> list[tuple[int, str, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a wsrl run directory)")
    points = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by an interrupted write
        if metric in row and isinstance(row[metric], (int, float)):
            points.append((int(row["step"]), row.get("phase", ""), float(row[metric])))
    return points


def _config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _pretrain_origin(run_dir: Path, cfg: dict) -> tuple[Path, int | None] | None:
    """The pretraining run a fine-tuning run started from (if still on disk) and the step of the
    checkpoint it took: the ``step_*`` folder named by ``--checkpoint``, else the run's newest one
    (None when its checkpoints are gone)."""
    ckpt = cfg.get("checkpoint") or ""
    if cfg.get("kind") != "finetune" or not ckpt:
        return None
    path = Path(ckpt)
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.name.startswith("step_") and path.parent.name == "checkpoints":
        step, path = checkpoint_step(path), path.parent.parent
    else:
        found = list_checkpoints(path)
        step = checkpoint_step(found[-1]) if found else None
    return (path, step) if (path / "metrics.jsonl").is_file() else None


def run_curve(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """x (offline steps negative, online env steps >= 0), y, and whether an offline phase is in it."""
    cfg = _config(run_dir)
    offline = []
    origin = (run_dir, None) if cfg.get("kind") == "pretrain" else _pretrain_origin(run_dir, cfg)
    if origin is not None:
        pre, handover_step = origin
        pts = read_evals(pre, metric)
        # Fine-tuning from an earlier checkpoint of the run: the hand-over is that checkpoint, and the
        # run's later evaluations are not part of this curve.
        end = handover_step if handover_step is not None else max((s for s, _, _ in pts), default=0)
        offline = [(s - end, y) for s, _, y in pts if s <= end]
    online = [] if cfg.get("kind") == "pretrain" else [(s, y) for s, _, y in read_evals(run_dir, metric)]
    if offline and online:
        offline = [(x, y) for x, y in offline if x < 0]  # x = 0 is the fine-tuning run's own step-0 eval
    points = sorted(offline + online)
    if not points:
        raise UserError(f"{run_dir}: metrics.jsonl has no '{metric}' points yet")
    xs, ys = zip(*points)
    return np.array(xs, dtype=float), np.array(ys, dtype=float), bool(offline)


def common_grid(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The union of the runs' x within the range all of them cover, and each run's y interpolated
    onto it (one row per run)."""
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    grid = np.unique(np.concatenate([c[0] for c in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if len(grid) == 0:
        raise UserError("runs with one label do not overlap in steps; give them different --labels")
    return grid, np.stack([np.interp(grid, x, y) for x, y in curves])


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs on their common grid."""
    if len(curves) == 1:
        x, y = curves[0]
        return x, y, np.zeros_like(y)
    grid, ys = common_grid(curves)
    return grid, ys.mean(0), ys.std(0)


def _pick_metric(run_dirs: list[Path], metric: str) -> str:
    """auto: the normalised score, else the success rate (adroit, kitchen), else the return."""
    if metric != "auto":
        return metric
    texts = [(run / "metrics.jsonl").read_text() for run in run_dirs if (run / "metrics.jsonl").is_file()]
    for candidate in ("eval/normalized_score", "eval/success_rate"):
        if any(candidate in text for text in texts):
            return candidate
    return "eval/return"


def pyplot(command: str):
    """matplotlib's pyplot on the file-only Agg backend, or one line naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"wsrl {command}: needs matplotlib (pip install 'wsrl[plot]')") from None
    return plt


def plot(cfg: PlotConfig) -> Path:
    if not cfg.runs:
        raise UserError("no run directories given (wsrl plot RUN_DIR... --out fig.png)")
    if cfg.labels and len(cfg.labels) != len(cfg.runs):
        raise UserError(f"--labels: give one per run ({len(cfg.runs)}), got {len(cfg.labels)}")
    out = Path(cfg.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out {cfg.out}: use a .png, .pdf or .svg file name")
    run_dirs = [Path(r) for r in cfg.runs]
    for run in run_dirs:
        if not run.is_dir():
            raise UserError(f"{run}: no such run directory")
    plt = pyplot("plot")

    metric = _pick_metric(run_dirs, cfg.metric)
    # A pretraining run given next to a fine-tuning run started from it is already in that curve.
    pulled = {origin[0] for r in run_dirs if (origin := _pretrain_origin(r, _config(r)))}
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    any_offline = any_online = False
    for i, run in enumerate(run_dirs):
        if run.resolve() in {p.resolve() for p in pulled} and not cfg.labels:
            continue
        x, y, has_offline = run_curve(run, metric)
        any_offline |= has_offline
        any_online |= bool((x >= 0).any()) and _config(run).get("kind") != "pretrain"
        groups.setdefault(cfg.labels[i] if cfg.labels else default_label(run), []).append((x, y))

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, curves in groups.items():
        x, mean, std = aggregate(curves)
        name = f"{label} (mean ± std, n={len(curves)})" if len(curves) > 1 else label
        (line,) = ax.plot(x, mean, label=name, lw=1.8)
        if len(curves) > 1:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    if any_offline and any_online:
        ax.axvline(0, color="0.3", ls="--", lw=1)
        ax.text(0, 1.01, " offline | online ", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("offline gradient steps (< 0)  |  online env steps (≥ 0)" if any_offline else "env steps")
    ax.set_ylabel({"eval/normalized_score": "normalised score (D4RL refs, ×100)",
                   "eval/success_rate": "success rate (evaluation)",
                   "eval/return": "evaluation return"}.get(metric, metric))
    if cfg.title:
        ax.set_title(cfg.title, pad=14)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
