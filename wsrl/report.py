"""`wsrl report`: the tables and figures of fine-tuning runs across envs, methods and seeds.

Per env x method: the metrics of ``wsrl.metrics`` (hand-over, dip, final, AUC), mean ± sample std
over seeds, and their IQM over seeds with 95% bootstrap CIs; per seed, every method's dip and final
side by side (methods that fine-tune one pretraining run per seed are paired). Across envs, following Agarwal et al. 2021 (rliable): IQM, median, mean and
optimality gap of the final score with 95% stratified bootstrap confidence intervals (runs
resampled within each env; percentile intervals; fixed seed), and performance profiles. rliable
itself is not used: its bootstrap comes from the `arch` package, whose releases that rliable
accepts (< 8) fail to import with pandas 3, so the resampling is scipy's (``scipy.stats.bootstrap``
with one sample per env resamples each env independently, which is the stratified bootstrap).

Runs are found under the given folders by their ``config.json`` (``kind: finetune``); a run
``.../<env>/<method>/seed<k>`` (the layout of `wsrl sweep`) is labelled by its folders, any other
by its env and its folder name without a seed suffix. A run is finished when its evaluations reach
its ``--steps``, so results copied without their checkpoints report the same; unfinished runs are
left out and named.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from scipy import stats
except ImportError:  # `wsrl report` says what to install
    stats = None

from wsrl.atomic import replace_dir
from wsrl.config import ReportConfig
from wsrl.errors import UserError
from wsrl.metrics import reached_its_steps, read_evaluations, run_metrics
from wsrl.plot import SEED_DIR, common_grid, default_label, pyplot

NORMALIZED, RETURN = "eval/normalized_score", "eval/return"
METRICS = ("handover", "dip", "final", "auc")
STATISTICS = ("IQM", "median", "mean", "optimality gap")
BATCH = 1_000
"""Resamples evaluated at once: bounds the bootstrap's memory (resamples x runs x curve points)."""
OPTIMAL = 100.0
"""Normalised score of the reference expert: the optimality gap is the mean shortfall below it."""


@dataclass(frozen=True)
class RunResult:
    env: str
    method: str
    seed: int
    path: Path
    metrics: dict[str, float]


def find_runs(folders: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """Finished and unfinished fine-tuning run folders under ``folders``."""
    found: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder")
        for config in sorted([folder / "config.json", *folder.rglob("*/config.json")]):
            if config.is_file() and json.loads(config.read_text()).get("kind") == "finetune":
                found.append(config.parent)
    runs = sorted(set(found))
    finished = {run: (run / "metrics.jsonl").is_file() and reached_its_steps(run) for run in runs}
    return [r for r in runs if finished[r]], [r for r in runs if not finished[r]]


def label(run: Path, config: dict) -> tuple[str, str, int]:
    if SEED_DIR.match(run.name):
        return run.parent.parent.name, run.parent.name, int(config["seed"])
    return config["env"], default_label(run), int(config["seed"])


def has_normalized(run: Path) -> bool:
    return bool(read_evaluations(run, NORMALIZED)[0])


def collect(runs: list[Path]) -> tuple[list[RunResult], dict[str, str]]:
    """Each run's metrics, and which score each env is reported in: the normalised score where
    every run of the env has one (the env has reference scores), else the return."""
    labelled = [(run, *label(run, json.loads((run / "config.json").read_text()))) for run in runs]
    seen: dict[tuple[str, str, int], Path] = {}
    for run, env, method, seed in labelled:
        if (env, method, seed) in seen:
            raise UserError(f"{run}: same env, method and seed ({env}, {method}, {seed}) as {seen[env, method, seed]}; "
                            f"report one of them")
        seen[env, method, seed] = run
    score = {env: NORMALIZED for _, env, _, _ in labelled}
    for run, env, _, _ in labelled:
        if not has_normalized(run):
            score[env] = RETURN
    results = [RunResult(env, method, seed, run, run_metrics(run, score[env]).as_dict())
               for run, env, method, seed in labelled]
    return results, score


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (scipy's trim_mean with 25% cut off each end)."""
    return stats.trim_mean(x, 0.25, axis=axis)


def aggregates(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
    """IQM (over all runs), median and mean (of the per-env means) and optimality gap of the
    scores of each env's runs; vectorised over leading resample axes for the bootstrap."""
    means = np.stack([t.mean(axis=axis) for t in tasks])
    shortfall = np.stack([np.minimum(t, OPTIMAL).mean(axis=axis) for t in tasks])
    return np.stack([iqm(np.concatenate(tasks, axis=axis), axis=axis), np.median(means, axis=0),
                     means.mean(axis=0), OPTIMAL - shortfall.mean(axis=0)])


def profile(taus: np.ndarray):
    """The performance profile at ``taus``: the fraction of runs scoring above tau, averaged over envs."""
    def fractions(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([(np.expand_dims(t, 0) > taus.reshape(-1, *[1] * t.ndim)).mean(axis=axis) for t in tasks], axis=0)

    return fractions


def bootstrap(statistic, tasks: list[np.ndarray], resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and 95% percentile interval, runs resampled with replacement within each env
    (each env's runs are one sample; scipy resamples the samples independently)."""
    point = statistic(*tasks)
    if min(len(t) for t in tasks) < 2:  # one run: no spread to resample
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    ci = stats.bootstrap(tasks, statistic, n_resamples=resamples, method="percentile", confidence_level=0.95,
                         vectorized=True, batch=BATCH, rng=np.random.default_rng(seed)).confidence_interval
    return point, ci.low, ci.high


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (a dip is NaN when no evaluation fell in its
    window); NaN where there are too few."""
    x = np.array([v for v in values if np.isfinite(v)])
    return (float(x.mean()) if len(x) else np.nan, float(x.std(ddof=1)) if len(x) > 1 else np.nan)


def per_env_iqm(results: list[RunResult], table: list, resamples: int, seed: int) -> list[tuple[str, str, int, dict]]:
    """(env, method, seeds, {metric: (IQM, CI low, CI high)}) for each row of `summary`: the IQM over
    seeds with a 95% percentile bootstrap interval (seeds resampled; finite values only, as a dip
    with no evaluation in its window is NaN)."""
    rows = []
    for env, method, n, _ in table:
        group = [r for r in results if r.env == env and r.method == method]
        values = {}
        for k in (*METRICS, "dip_fraction"):
            x = np.array([r.metrics[k] for r in group])
            x = x[np.isfinite(x)]
            values[k] = tuple(float(v) for v in bootstrap(iqm, [x], resamples, seed)) if len(x) else (np.nan,) * 3
        rows.append((env, method, n, values))
    return rows


def _mean_std_text(mean: float, std: float) -> str:
    return "—" if not np.isfinite(mean) else f"{mean:.1f} ± {std:.1f}" if np.isfinite(std) else f"{mean:.1f}"


def summary(results: list[RunResult], envs: list[str], methods: list[str]) -> list[tuple[str, str, int, dict]]:
    """(env, method, seeds, {metric: (mean, std)}) for every env x method that has runs."""
    rows = []
    for env in envs:
        for method in methods:
            group = [r for r in results if r.env == env and r.method == method]
            if group:
                rows.append((env, method, len(group), {k: mean_std([r.metrics[k] for r in group]) for k in METRICS}))
    return rows


def _interval(point: float, low: float, high: float) -> str:
    return f"{point:.1f} [{low:.1f}, {high:.1f}]" if np.isfinite(low) else f"{point:.1f}"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _finals(results: list[RunResult], method: str, envs: list[str]) -> list[np.ndarray]:
    return [np.array([r.metrics["final"] for r in results if r.env == env and r.method == method]) for env in envs]


def _curves_figure(results: list[RunResult], score: dict[str, str], envs: list[str], methods: list[str],
                   cfg: ReportConfig, path: Path) -> None:
    plt = pyplot("report")
    cols = min(3, len(envs))
    rows = -(-len(envs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.4, 4.6 * cols), 3.6 * rows), dpi=120, squeeze=False)
    for ax, env in zip(axes.flat, envs):
        for method in methods:
            runs = [r for r in results if r.env == env and r.method == method]
            if not runs:
                continue
            grid, ys = common_grid([tuple(map(np.asarray, read_evaluations(r.path, score[env]))) for r in runs])
            (line,) = ax.plot(grid, ys.mean(0), lw=1.6, label=f"{method} (n={len(runs)})")
            if len(runs) > 1:
                ci = stats.bootstrap((ys,), np.mean, axis=0, n_resamples=cfg.resamples, method="percentile",
                                     batch=BATCH, rng=np.random.default_rng(cfg.seed)).confidence_interval
                ax.fill_between(grid, ci.low, ci.high, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(env, fontsize=10)
        ax.set_xlabel("online env steps")
        ax.set_ylabel("normalised score" if score[env] == NORMALIZED else "evaluation return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(envs):]:
        ax.set_visible(False)
    fig.suptitle("evaluations during fine-tuning: mean over seeds, 95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _profiles_figure(profiles: dict[str, tuple], taus: np.ndarray, path: Path) -> None:
    plt = pyplot("report")
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for method, (point, low, high) in profiles.items():
        (line,) = ax.plot(taus, point, lw=1.6, label=method)
        if np.isfinite(low).all():
            ax.fill_between(taus, low, high, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("normalised final score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title("performance profiles (95% stratified bootstrap CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").is_file())):
        raise UserError(f"--out {out}: holds files that are not a wsrl report; give a new folder or a previous report's")


def report(cfg: ReportConfig) -> Path:
    if not cfg.runs:
        raise UserError("no folders given (wsrl report DIR... --out REPORT/)")
    if cfg.resamples < 1:
        raise UserError(f"--resamples: must be positive, got {cfg.resamples}")
    if stats is None:
        raise UserError("wsrl report: needs scipy (pip install 'wsrl[report]')")
    out = Path(cfg.out)
    _check_out(out)
    runs, unfinished = find_runs(cfg.runs)
    if not runs:
        raise UserError(f"{', '.join(cfg.runs)}: no finished fine-tuning runs there")
    pyplot("report")  # before any work: the figures need matplotlib
    results, score = collect(runs)
    envs = sorted({r.env for r in results})
    methods = sorted({r.method for r in results})
    # Only normalised scores share a scale across envs; the methods are compared on the envs all of them ran.
    common = [e for e in envs if score[e] == NORMALIZED and all(any(r.env == e and r.method == m for r in results) for m in methods)]
    top = max([OPTIMAL, *(r.metrics["final"] for r in results if r.env in common)])
    taus = np.arange(0.0, np.ceil(top) + 1)  # every point of normalised score
    overall = {m: bootstrap(aggregates, _finals(results, m, common), cfg.resamples, cfg.seed) for m in methods} if common else {}
    profiles = {m: bootstrap(profile(taus), _finals(results, m, common), cfg.resamples, cfg.seed) for m in methods} if common else {}
    table = summary(results, envs, methods)
    robust = per_env_iqm(results, table, cfg.resamples, cfg.seed)

    def build(folder: Path) -> None:
        _write_csv(folder / "runs.csv", ["env", "method", "seed", "score", *METRICS, "dip_fraction", "run"],
                   [[r.env, r.method, r.seed, score[r.env], *(r.metrics[k] for k in METRICS), r.metrics["dip_fraction"],
                     str(r.path)] for r in results])
        _write_csv(folder / "per_env.csv", ["env", "method", "score", "seeds", *(f"{k}_{s}" for k in METRICS for s in ("mean", "std"))],
                   [[env, method, score[env], n, *(x for k in METRICS for x in values[k])] for env, method, n, values in table])
        _write_csv(folder / "per_env_iqm.csv", ["env", "method", "score", "seeds",
                                                *(f"{k}_{s}" for k in (*METRICS, "dip_fraction") for s in ("iqm", "ci_low", "ci_high"))],
                   [[env, method, score[env], n, *(x for k in (*METRICS, "dip_fraction") for x in values[k])]
                    for env, method, n, values in robust])
        _write_csv(folder / "aggregates.csv", ["method", "statistic", "value", "ci_low", "ci_high", "envs", "runs"],
                   [[m, name, point[i], low[i], high[i], len(common), sum(len(t) for t in _finals(results, m, common))]
                    for m, (point, low, high) in overall.items() for i, name in enumerate(STATISTICS)])
        _curves_figure(results, score, envs, methods, cfg, folder / "curves.png")
        if profiles:
            _write_csv(folder / "profiles.csv", ["method", "tau", "fraction", "ci_low", "ci_high"],
                       [[m, tau, *(x[i] for x in curve)] for m, curve in profiles.items() for i, tau in enumerate(taus)])
            _profiles_figure(profiles, taus, folder / "profiles.png")
        (folder / "report.md").write_text(_markdown(results, score, table, robust, common, overall, unfinished, cfg))

    replace_dir(out, build)
    return out / "report.md"


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _interval_text(point: float, low: float, high: float, scale: float = 1.0) -> str:
    return "—" if not np.isfinite(point) else _interval(point * scale, low * scale, high * scale)


def _markdown(results, score, table, robust, common, overall, unfinished, cfg: ReportConfig) -> str:
    envs = sorted({r.env for r in results})
    lines = [
        "# wsrl report", "",
        f"{_count(len(results), 'finished fine-tuning run')} under {', '.join(cfg.runs)}: {_count(len(envs), 'env')} × "
        f"{_count(len({r.method for r in results}), 'method')}. "
        "Metrics as defined in `wsrl/metrics.py` (docs/design.md, \"Metrics\"): **hand-over** = evaluation at online step 0; "
        "**dip** = hand-over minus the lowest evaluation in the 10k online steps after the warmup; **final** = mean "
        "evaluation over the last 10k online steps (the last half of shorter runs); **AUC** = mean evaluation over the "
        "online phase. Score: the normalised score (D4RL reference returns, ×100) where the env has reference "
        "scores, else the evaluation return (column *score*).", "",
        "## Per env and method (mean ± sample std over seeds)", "",
        "| env | method | score | seeds | hand-over | dip | final | AUC |", "|---|---|---|---|---|---|---|---|"]
    for env, method, n, values in table:
        lines.append(f"| {env} | {method} | {'normalised' if score[env] == NORMALIZED else 'return'} | {n} | "
                     + " | ".join(_mean_std_text(*values[k]) for k in METRICS) + " |")
    lines += ["", "## Per env and method: IQM over seeds, 95% bootstrap CI", "",
              f"Interquartile mean over the seeds; in brackets the 95% percentile bootstrap interval (seeds resampled, "
              f"{cfg.resamples} resamples, seed {cfg.seed}); none with a single seed. Dip %: the dip as a fraction of the "
              "hand-over.", "",
              "| env | method | seeds | hand-over | dip | dip % | final | AUC |", "|---|---|---|---|---|---|---|---|"]
    for env, method, n, values in robust:
        lines.append(f"| {env} | {method} | {n} | " + " | ".join(
            [_interval_text(*values["handover"]), _interval_text(*values["dip"]),
             _interval_text(*values["dip_fraction"], scale=100), _interval_text(*values["final"]),
             _interval_text(*values["auc"])]) + " |")
    methods = sorted({r.method for r in results})
    lines += ["", "## Per seed: dip and final of each method", "",
              "Methods that fine-tune the same pretraining run of a seed (e.g. WSRL and no warmup) are paired here.", "",
              "| env | seed | " + " | ".join(f"{m}: hand-over / dip / final" for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
    by_key = {(r.env, r.seed, r.method): r.metrics for r in results}
    for env in envs:
        for seed in sorted({r.seed for r in results if r.env == env}):
            cells = [" / ".join((f"{m[k]:.1f}" if np.isfinite(m[k]) else "—") for k in ("handover", "dip", "final")) if (m := by_key.get((env, seed, method)))
                     else "—" for method in methods]
            lines.append(f"| {env} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", "## Across envs: final score", ""]
    if common:
        lines += [f"Normalised final scores on {_count(len(common), 'env')} ({', '.join(common)}). IQM: mean of the middle 50% of "
                  "all runs; median and mean: of the per-env means; optimality gap: mean shortfall below 100. "
                  f"95% stratified bootstrap intervals (runs resampled within each env, percentile method, "
                  f"{cfg.resamples} resamples, seed {cfg.seed}); none where an env has a single run.", "",
                  "| method | " + " | ".join(STATISTICS) + " | runs |", "|---|" + "---|" * (len(STATISTICS) + 1)]
        for method, (point, low, high) in overall.items():
            n = sum(len(t) for t in _finals(results, method, common))
            lines.append(f"| {method} | " + " | ".join(_interval(point[i], low[i], high[i]) for i in range(len(STATISTICS)))
                         + f" | {n} |")
        lines += ["", "![performance profiles](profiles.png)"]
    else:
        lines.append("No env with normalised scores that every method ran: returns of different envs are not on one scale.")
    left = [e for e in envs if e not in common]
    if common and left:
        lines += ["", f"Not in the across-env statistics: {', '.join(left)} (no reference scores, or not run by every method)."]
    lines += ["", "## Learning curves", "", "![learning curves](curves.png)", "",
              "Files: `runs.csv` (every run's metrics), `per_env.csv`, `per_env_iqm.csv`, `aggregates.csv`, `curves.png`"
              + (", `profiles.csv`, `profiles.png`." if common else ".")]
    if unfinished:
        lines += ["", f"Left out, not finished: {', '.join(str(r) for r in unfinished)}."]
    return "\n".join(lines) + "\n"
