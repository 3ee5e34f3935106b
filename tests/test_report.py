"""`wsrl report` on synthetic runs: tables against hand-computed IQM, median, mean and optimality
gap; bootstrap intervals against an independent stratified bootstrap written here."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from helpers import run_wsrl

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

# Final normalised scores per method and env, four seeds each (env c has a score above 100).
FINALS = {"A": {"a": [10, 20, 30, 40], "b": [50, 60, 70, 80], "c": [15, 25, 35, 105]},
          "B": {"a": [5, 5, 10, 20], "b": [30, 40, 50, 90], "c": [0, 10, 20, 30]}}
HANDOVER = 20.0


def _run(folder, env, seed, final, normalized=True, finished=True):
    """A 40k-step fine-tuning run (warmup 5k): evaluations 20 (hand-over), 0 (the dip, at 10k),
    then the final score from 30k on, so final = that score and dip = 20."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": "finetune", "env": env, "seed": seed,
                                                    "warmup_steps": 5_000, "steps": 40_000}))
    key = "eval/normalized_score" if normalized else "eval/return"
    rows = [{"step": s, "phase": "online", key: v, **({"eval/return": 10 * v} if normalized else {})}
            for s, v in [(0, HANDOVER), (10_000, 0.0), (20_000, final / 2), (30_000, final), (40_000, final)]
            if finished or s <= 20_000]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "checkpoints" / f"step_{40_000 if finished else 20_000:09d}").mkdir(parents=True)


def _sweep_tree(root):
    for method, envs in FINALS.items():
        for env, finals in envs.items():
            for seed, final in enumerate(finals):
                _run(root / env / method / f"seed{seed}", f"{env}-v5", seed, final)
    for seed, final in enumerate([-900.0, -800.0]):  # no reference scores: reported as returns, not aggregated
        for method in FINALS:
            _run(root / "pend" / method / f"seed{seed}", "Pendulum-v1", seed, final, normalized=False)
    _run(root / "a" / "A" / "seed9", "a-v5", 9, 1.0, finished=False)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _stratified_bootstrap(tasks, statistic, reps, rng):
    """Runs resampled with replacement within each task; 2.5/97.5 percentiles of the statistic."""
    resampled = [t[rng.integers(0, len(t), size=(reps, len(t)))] for t in tasks]
    values = statistic(resampled)
    return np.percentile(values, [2.5, 97.5], axis=-1)


def _iqm(resampled):
    runs = np.sort(np.concatenate(resampled, axis=-1), axis=-1)
    cut = runs.shape[-1] // 4
    return runs[..., cut:runs.shape[-1] - cut].mean(-1)


def _median(resampled):
    return np.median(np.stack([r.mean(-1) for r in resampled]), axis=0)


def test_report_matches_hand_computed_statistics_and_an_independent_bootstrap(tmp_path):
    _sweep_tree(tmp_path / "sweep")
    out = tmp_path / "report"
    assert run_wsrl("report", tmp_path / "sweep", "--out", out, "--resamples", 10_000, "--seed", 0) == 0
    assert sorted(p.name for p in out.iterdir()) == ["aggregates.csv", "curves.png", "per_env.csv", "per_env_iqm.csv",
                                                     "profiles.csv", "profiles.png", "report.md", "runs.csv"]
    assert all((out / f).read_bytes()[:4] == b"\x89PNG" for f in ("curves.png", "profiles.png"))

    # IQM of all 12 runs (3 cut off each end), median / mean of the per-env means, optimality gap
    # with scores clipped at 100 (105 -> 100), all by hand.
    expected = {"A": {"IQM": (25 + 30 + 35 + 40 + 50 + 60) / 6, "median": 45.0, "mean": 45.0,
                      "optimality gap": 100 - (25 + 65 + (15 + 25 + 35 + 100) / 4) / 3},
                "B": {"IQM": (10 + 10 + 20 + 20 + 30 + 30) / 6, "median": 15.0, "mean": (10 + 52.5 + 15) / 3,
                      "optimality gap": 100 - (10 + 52.5 + 15) / 3}}
    rows = {(r["method"], r["statistic"]): r for r in _csv(out / "aggregates.csv")}
    assert len(rows) == 8
    rng = np.random.default_rng(12345)  # a different stream than the report's: the check is statistical
    for method, values in expected.items():
        for statistic, value in values.items():
            row = rows[method, statistic]
            assert float(row["value"]) == pytest.approx(value) and row["envs"] == "3" and row["runs"] == "12"
        tasks = [np.array(v, dtype=float) for v in FINALS[method].values()]
        for statistic, fn in (("IQM", _iqm), ("median", _median)):
            low, high = _stratified_bootstrap(tasks, fn, 20_000, rng)
            row = rows[method, statistic]
            # Tolerance 1 point: the IQM of 12 resampled runs takes values 5/6 apart, and an endpoint
            # near a boundary between two of them lands on either from one random stream to another
            # (the intervals are 13-45 points wide).
            assert float(row["ci_low"]) == pytest.approx(low, abs=1.0), (method, statistic)
            assert float(row["ci_high"]) == pytest.approx(high, abs=1.0), (method, statistic)
            assert float(row["ci_low"]) < values[statistic] < float(row["ci_high"])

    per_env = {(r["env"], r["method"]): r for r in _csv(out / "per_env.csv")}
    a = per_env["a", "A"]  # the unfinished seed9 run is not in it
    assert (a["seeds"], a["score"]) == ("4", "eval/normalized_score")
    assert float(a["final_mean"]) == 25.0 and float(a["final_std"]) == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    assert float(a["handover_mean"]) == HANDOVER and float(a["dip_mean"]) == HANDOVER
    assert per_env["pend", "B"]["score"] == "eval/return" and float(per_env["pend", "B"]["final_mean"]) == -850.0

    # Per env and method, the IQM over seeds: of A's finals on env b (50, 60, 70, 80), the middle two;
    # its interval against the independent bootstrap (one task: seeds resampled).
    robust = {(r["env"], r["method"]): r for r in _csv(out / "per_env_iqm.csv")}
    b = robust["b", "A"]
    assert float(b["final_iqm"]) == 65.0 and float(b["dip_iqm"]) == HANDOVER and float(b["dip_fraction_iqm"]) == 1.0
    low, high = _stratified_bootstrap([np.array(FINALS["A"]["b"], dtype=float)], _iqm, 20_000, rng)
    assert float(b["final_ci_low"]) == pytest.approx(low, abs=2.5) and float(b["final_ci_high"]) == pytest.approx(high, abs=2.5)

    # Profiles: fraction of runs above tau, averaged over envs (A at 50: 0/4, 3/4, 1/4).
    profiles = {(r["method"], float(r["tau"])): float(r["fraction"]) for r in _csv(out / "profiles.csv")}
    assert profiles["A", 50.0] == pytest.approx((0 + 0.75 + 0.25) / 3)
    assert profiles["B", 0.0] == pytest.approx((1 + 1 + 0.75) / 3)

    text = (out / "report.md").read_text()
    assert f"| A | {expected['A']['IQM']:.1f} [{float(rows['A', 'IQM']['ci_low']):.1f}, " in text
    assert "| a | A | normalised | 4 | 20.0 ± 0.0 | 20.0 ± 0.0 | 25.0 ± 12.9 |" in text
    assert "| pend | A | return | 2 |" in text and "Not in the across-env statistics: pend" in text
    assert f"| b | A | 4 | 20.0 [20.0, 20.0] | 20.0 [20.0, 20.0] | 100.0 [100.0, 100.0] | 65.0 [{float(b['final_ci_low']):.1f}, " in text
    # Per seed, each method's hand-over / dip / final side by side: seed 3 of env c.
    assert "| c | 3 | 20.0 / 20.0 / 105.0 | 20.0 / 20.0 / 30.0 |" in text
    assert "Left out, not finished:" in text and "seed9" in text

    # Written again: the same numbers (fixed seed), the old report replaced as a whole.
    (out / "stale.png").write_bytes(b"x")
    assert run_wsrl("report", tmp_path / "sweep", "--out", out, "--resamples", 10_000) == 0
    assert not (out / "stale.png").exists() and _csv(out / "aggregates.csv") == list(rows.values())


def test_report_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    _run(tmp_path / "runs" / "a" / "A" / "seed0", "a-v5", 0, 5.0)
    cases = {"no finished fine-tuning runs there": [tmp_path / "empty", "--out", tmp_path / "r"],
             "no such folder": [tmp_path / "nope", "--out", tmp_path / "r"],
             "holds files that are not a wsrl report": [tmp_path / "runs", "--out", mine],
             "--resamples: must be positive": [tmp_path / "runs", "--out", tmp_path / "r", "--resamples", 0]}
    for expected, args in cases.items():
        capsys.readouterr()
        assert run_wsrl("report", *args) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists() and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_report_of_metrics_copied_without_checkpoints_is_the_same_and_names_the_unfinished(tmp_path):
    _sweep_tree(tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "copied", ignore=shutil.ignore_patterns("checkpoints"))
    assert not list((tmp_path / "copied").rglob("checkpoints"))
    reports = {}
    for tree in ("full", "copied"):
        assert run_wsrl("report", tmp_path / tree, "--out", tmp_path / f"report-{tree}", "--resamples", 200) == 0
        reports[tree] = {f: (tmp_path / f"report-{tree}" / f).read_text().replace(str(tmp_path / tree), "TREE")
                         for f in ("report.md", "runs.csv", "per_env.csv", "aggregates.csv", "profiles.csv")}
    assert reports["copied"] == reports["full"]
    text = reports["copied"]["report.md"]
    assert "28 finished fine-tuning runs" in text and "Left out, not finished: TREE/a/A/seed9." in text
