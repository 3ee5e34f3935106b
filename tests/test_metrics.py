import json
import math

import pytest

from wsrl.errors import UserError
from wsrl.metrics import online_metrics, run_metrics


def test_online_metrics_by_hand():
    # 40k-step run, warmup 5k: the dip window is (5k, 15k], the final window [30k, 40k].
    steps = [0, 5_000, 10_000, 15_000, 20_000, 30_000, 40_000]
    values = [30.0, 30.0, 12.0, 18.0, 40.0, 50.0, 60.0]
    m = online_metrics(steps, values, warmup_steps=5_000, total_steps=40_000)
    assert m.handover == 30.0
    assert m.dip == 18.0  # 30 - min(12, 18); the 5k point (end of warmup) is not in the window
    assert m.dip_fraction == pytest.approx(0.6)
    assert m.final == 55.0
    area = (30 + 30) / 2 * 5e3 + (30 + 12) / 2 * 5e3 + (12 + 18) / 2 * 5e3 + (18 + 40) / 2 * 5e3 \
        + (40 + 50) / 2 * 1e4 + (50 + 60) / 2 * 1e4
    assert m.auc == pytest.approx(area / 40_000)


def test_short_run_final_is_last_half_and_no_dip_point_is_nan():
    m = online_metrics([0, 4_000, 8_000, 12_000], [10.0, 20.0, 30.0, 40.0], warmup_steps=12_000)
    assert m.final == 35.0  # steps >= 6k: 30 and 40
    assert math.isnan(m.dip)
    with pytest.raises(ValueError, match="step 0"):
        online_metrics([1_000, 2_000], [1.0, 2.0], warmup_steps=0)


def test_run_metrics_reads_a_finetune_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kind": "finetune", "warmup_steps": 1, "steps": 4}))
    rows = [{"step": s, "phase": "online", "eval/normalized_score": v} for s, v in [(0, 5.0), (2, 1.0), (4, 7.0)]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "ev')
    m = run_metrics(tmp_path)
    assert (m.handover, m.dip, m.final) == (5.0, 4.0, 4.0)  # final: steps >= 2 of 4; the cut line skipped
    (tmp_path / "config.json").write_text(json.dumps({"kind": "pretrain"}))
    with pytest.raises(UserError, match="not a fine-tuning run"):
        run_metrics(tmp_path)
