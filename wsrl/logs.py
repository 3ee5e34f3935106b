"""TensorBoard scalars, the same metrics appended to ``metrics.jsonl``, and a console progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


def _step_of(line: str) -> float:
    """Step of a metrics.jsonl line; a line cut short by a crash counts as after everything."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class RunLogger:
    """Tags are namespaced (``losses/``, ``q/``, ``eval/``, ``train/``, ``perf/``) as in CleanRL.

    On resume, TensorBoard events and ``metrics.jsonl`` lines after the checkpoint's step are
    dropped, so curves hold each step once.
    """

    def __init__(self, run_dir: Path, total: int, start: int, desc: str):
        self.run_dir = Path(run_dir)
        self.tb = SummaryWriter(str(self.run_dir), purge_step=start)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        if self.jsonl_path.exists():
            kept = [line for line in self.jsonl_path.read_text().splitlines() if _step_of(line) <= start]
            self.jsonl_path.write_text("".join(line + "\n" for line in kept))
        self.jsonl = open(self.jsonl_path, "a")
        self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0, unit="step")

    def log_config(self, config: dict) -> None:
        self.tb.add_text("config", "```json\n" + json.dumps(config, indent=1) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float], phase: str) -> None:
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        clean = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, "phase": phase, **clean}) + "\n")
        self.jsonl.flush()
        self.tb.flush()

    def progress(self, n: int, **postfix: float) -> None:
        if postfix:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()
        self.tb.close()
