"""`wsrl plot`: a PNG from tiny runs; offline + online on one axis; seeds averaged by label."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsrl.cli import main
from wsrl.plot import PlotConfig, aggregate, default_label, run_curve

pytest.importorskip("matplotlib")

TINY = ["--critic-hidden", "16", "16", "--actor-hidden", "16", "16", "--ensemble-size", "2", "--eval-episodes", "1",
        "--log-every", "50", "--device", "cpu", "--threads", "1"]


def _fake_run(folder, kind, evals, checkpoint=""):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": kind, "checkpoint": checkpoint}))
    with open(folder / "metrics.jsonl", "w") as f:
        for step, score in evals:
            f.write(json.dumps({"step": step, "phase": "x", "eval/return": score * 10, "eval/normalized_score": score}) + "\n")
            f.write(json.dumps({"step": step, "phase": "x", "losses/critic_loss": 1.0}) + "\n")


def test_plot_writes_png_from_two_tiny_real_runs(tmp_path, hopper_file):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    assert main(["pretrain", "--env", "Hopper-v5", "--dataset", str(hopper_file), "--out", str(pre), "--steps", "20",
                 "--eval-every", "10", "--batch-size", "32", "--cql-n-actions", "2", *TINY]) == 0
    assert main(["finetune", "--checkpoint", str(pre), "--env", "Hopper-v5", "--out", str(ft), "--steps", "40",
                 "--warmup-steps", "20", "--eval-every", "20", "--batch-size", "32", "--utd", "2", *TINY]) == 0
    x, y, has_offline = run_curve(ft, "eval/normalized_score")
    assert has_offline
    np.testing.assert_array_equal(x, [-10, 0, 20, 40])  # pretrain evals at 10, 20 -> -10, (0 = fine-tuning's step 0)
    out = tmp_path / "fig.png"
    assert main(["plot", str(pre), str(ft), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000


def test_runs_sharing_a_label_are_averaged(tmp_path):
    a = tmp_path / "wsrl_seed0"
    b = tmp_path / "wsrl_seed1"
    _fake_run(a, "finetune", [(0, 10.0), (100, 20.0), (200, 30.0)])
    _fake_run(b, "finetune", [(0, 20.0), (100, 40.0), (200, 50.0)])
    assert default_label(a) == default_label(b) == "wsrl"
    x, mean, std = aggregate([run_curve(a, "eval/normalized_score")[:2], run_curve(b, "eval/normalized_score")[:2]])
    np.testing.assert_allclose(x, [0, 100, 200])
    np.testing.assert_allclose(mean, [15, 30, 40])
    np.testing.assert_allclose(std, [5, 10, 10])
    from wsrl.plot import plot

    out = plot(PlotConfig(runs=(str(a), str(b)), out=str(tmp_path / "f.png"), title="t"))
    assert out.is_file()


def test_a_sweeps_seed_folders_are_labelled_by_their_method(tmp_path):
    runs = [tmp_path / "hopper" / method / f"seed{k}" for method in ("wsrl", "no-warmup") for k in (0, 1)]
    for run in runs:
        _fake_run(run, "finetune", [(0, 10.0), (100, 20.0)])
    assert [default_label(run) for run in runs] == ["wsrl", "wsrl", "no-warmup", "no-warmup"]
    assert default_label(tmp_path / "wsrl_seed0") == "wsrl"  # a folder named after its seed keeps its own rule


def test_plot_bad_input(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "f.png")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "f.png")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    _fake_run(tmp_path / "r", "finetune", [(0, 1.0)])
    assert main(["plot", str(tmp_path / "r"), "--out", str(tmp_path / "f.txt")]) == 2
    assert not (tmp_path / "f.png").exists()


def test_offline_curve_ends_at_the_checkpoint_fine_tuning_started_from(tmp_path):
    """Fine-tuning from an earlier checkpoint of a pretraining run: the hand-over (x = 0) is that
    checkpoint's step, and the run's later offline evaluations are left out."""
    pre = tmp_path / "pre"
    _fake_run(pre, "pretrain", [(10, 1.0), (20, 2.0), (30, 3.0)])
    for step in (20, 30):
        (pre / "checkpoints" / f"step_{step:09d}").mkdir(parents=True)
    from_step_20 = tmp_path / "ft20"
    _fake_run(from_step_20, "finetune", [(0, 5.0), (10, 6.0)], checkpoint=str(pre / "checkpoints" / "step_000000020"))
    x, y, _ = run_curve(from_step_20, "eval/normalized_score")
    np.testing.assert_array_equal(x, [-10, 0, 10])
    np.testing.assert_array_equal(y, [1.0, 5.0, 6.0])
    from_run = tmp_path / "ft"  # the run directory: its newest checkpoint, step 30
    _fake_run(from_run, "finetune", [(0, 5.0)], checkpoint=str(pre))
    x, y, _ = run_curve(from_run, "eval/normalized_score")
    np.testing.assert_array_equal(x, [-20, -10, 0])
    np.testing.assert_array_equal(y, [1.0, 2.0, 5.0])
