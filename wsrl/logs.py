"""TensorBoard scalars, the same metrics appended to ``metrics.jsonl`` (and, with --wandb-project,
logged to Weights & Biases), and a console progress bar."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from wsrl.atomic import atomic_write
from wsrl.errors import UserError


def _step_of(line: str) -> float:
    """Step of a metrics.jsonl line; a line cut short by a crash counts as after everything."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class RunLogger:
    """Tags are namespaced (``losses/``, ``q/``, ``eval/``, ``train/``, ``perf/``) as in CleanRL.

    On resume, TensorBoard events and ``metrics.jsonl`` lines after the checkpoint's step are
    dropped, so curves hold each step once. W&B cannot drop logged steps, so a resumed run is a new
    W&B run (same name, group and tags) that starts after the checkpoint's step.
    """

    def __init__(self, run_dir: Path, total: int, start: int, desc: str, config: dict):
        """Writes ``config.json``, once a W&B run (if asked for) has started: one that cannot start
        leaves the folder without a run in it. ``metrics.jsonl`` comes after ``config.json``, so a
        run killed as soon as it logs can be resumed."""
        self.run_dir = Path(run_dir)
        self.wandb = self._wandb_run(config, start) if config["wandb_project"] else None
        atomic_write(self.run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=1)))
        self.tb = SummaryWriter(str(self.run_dir), purge_step=start)
        if start == 0:
            self.tb.add_text("config", "```json\n" + json.dumps(config, indent=1) + "\n```", 0)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        if self.jsonl_path.exists():
            kept = [line for line in self.jsonl_path.read_text().splitlines() if _step_of(line) <= start]
            self.jsonl_path.write_text("".join(line + "\n" for line in kept))
        self.jsonl = open(self.jsonl_path, "a")
        self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0, unit="step")

    def _wandb_run(self, config: dict, start: int):
        import wandb

        try:
            # console="off": W&B would otherwise wrap this process's stdout and stderr, which the
            # progress bar and a sweep's run logs write to.
            return wandb.init(project=config["wandb_project"], entity=config["wandb_entity"] or None,
                              group=config["wandb_group"] or None, tags=list(config["wandb_tags"]) or None,
                              name=self.run_dir.name + (f" (resumed at step {start})" if start else ""),
                              config=config, dir=str(self.run_dir), settings=wandb.Settings(console="off"))
        except wandb.Error as e:
            raise UserError(f"--wandb-project {config['wandb_project']}: W&B did not start a run "
                            f"({str(e).strip().splitlines()[0]}); `wandb login`, or WANDB_MODE=offline") from None

    def log(self, step: int, metrics: dict[str, float], phase: str) -> None:
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
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
        if self.wandb is not None:
            self.wandb.finish()
