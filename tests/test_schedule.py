"""Learning-rate schedules (wsrl/schedule.py) and the critic-first actor delay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from conftest import TINY, random_rollouts, run_wsrl, write_d4rl

BEFORE = Path(__file__).parent / "data" / "constant_lr_before.json"
"""Metrics of `tiny_runs` recorded with the code before learning-rate schedules existed (commit 128cae0)."""
COMPARED = ("losses/", "q/", "policy/", "cql/", "eval/return")


def tiny_runs(tmp: Path) -> dict[str, dict[str, float]]:
    """A tiny CQL pretraining and a WSRL fine-tuning of it, one thread (bit-reproducible); the
    compared metrics of both metrics.jsonl files, by phase and step."""
    data = tmp / "hopper.hdf5"
    write_d4rl(data, random_rollouts())
    pre, ft = tmp / "pre", tmp / "ft"
    common = [*TINY, "--log-every", 10, "--threads", 1]
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", data, "--steps", 40, "--out", pre,
                    "--eval-every", 40, "--save-every", 40, "--batch-size", 64, *common) == 0
    assert run_wsrl("finetune", "--checkpoint", pre, "--out", ft, "--steps", 140, "--warmup-steps", 100,
                    "--batch-size", 32, "--eval-every", 140, *common) == 0
    out = {}
    for name, run in (("pretrain", pre), ("finetune", ft)):
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            for key, value in row.items():
                if key.startswith(COMPARED):
                    out[f"{name}/{row['step']}/{key}"] = value
    return out


def machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


if __name__ == "__main__":
    # Run with the old code first on the path: PYTHONPATH=<old checkout> python tests/test_schedule.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        metrics = tiny_runs(Path(tmp))
    BEFORE.write_text(json.dumps({"machine": machine(), "metrics": metrics}, indent=0) + "\n")
    print(f"wrote {len(metrics)} values to {BEFORE}", file=sys.stderr)
