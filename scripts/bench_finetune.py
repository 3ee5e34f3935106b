"""A short real `wsrl finetune` run against the learner-only bound: what the loop costs outside the update.

    python scripts/bench_finetune.py [--device cpu|cuda] [--online-steps 300] [--json out.json]

1. Learner-only bound: the WSRL update at its defaults on a random device-resident buffer, as in
   scripts/bench_learner.py (env-steps/s = updates/s, one update per env step).
2. Two real fine-tuning runs from scratch on HalfCheetah-v5 at the default settings (10 critics,
   UTD 4, batch 1024, 20 evaluation episodes, log every 1000 steps): one with W warmup steps plus
   N online steps, one with the same warmup plus 1 online step. Their difference, less evaluation
   time (reported separately), is what N - 1 online env steps cost in the real loop.
   overhead = 1 - (time the learner alone needs for N - 1 updates) / (that real time):
   env stepping, acting, buffer writes, sampling, the divergence guard and logging.
The learner bound is measured between the runs and again after them; the median is used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_learner import ACT, OBS, random_buffer, timed  # noqa: E402

from wsrl.agents import SAC  # noqa: E402
from wsrl.config import AgentConfig, FinetuneConfig, NetConfig  # noqa: E402
from wsrl.fast import make_update  # noqa: E402
from wsrl.nets import ActorCritic  # noqa: E402
from wsrl.online import finetune  # noqa: E402


def learner_rate(device: torch.device, seconds: float) -> float:
    cfg = FinetuneConfig()
    agent = SAC(ActorCritic(OBS, ACT, NetConfig(), 1.0, 5.0).to(device), AgentConfig(), NetConfig())
    update = make_update(agent, cfg, device)
    buf = random_buffer(device)
    return timed(lambda: update(buf.sample(cfg.utd, cfg.batch_size // cfg.utd)), device, seconds)


def real_run(device: str, warmup: int, online: int, out: Path) -> tuple[float, float]:
    """Wall seconds of one `wsrl finetune` run and the evaluation seconds inside it."""
    cfg = FinetuneConfig(env="HalfCheetah-v5", out=str(out), overwrite=True, device=device, from_scratch=True,
                         steps=warmup + online, warmup_steps=warmup)
    start = time.perf_counter()
    finetune(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, sum(r.get("perf/eval_seconds", 0.0) for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--online-steps", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window of each learner-only measurement")
    p.add_argument("--json", default="")
    a = p.parse_args()
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        rates = [learner_rate(device, a.seconds)]
        full_wall, full_eval = real_run(a.device, a.warmup_steps, a.online_steps, Path(tmp) / "full")
        rates.append(learner_rate(device, a.seconds))
        base_wall, base_eval = real_run(a.device, a.warmup_steps, 1, Path(tmp) / "base")
        rates.append(learner_rate(device, a.seconds))
    bound = statistics.median(rates)
    steps = a.online_steps - 1
    online_seconds = (full_wall - full_eval) - (base_wall - base_eval)
    learner_seconds = steps / bound
    report = {
        "device": a.device, "threads": torch.get_num_threads(), "warmup_steps": a.warmup_steps,
        "online_steps": a.online_steps, "learner_bound_env_steps_per_s": bound, "learner_bound_samples": rates,
        "run_env_steps_per_s": steps / online_seconds,
        "overhead_fraction": 1.0 - learner_seconds / online_seconds,
        "run_wall_s": full_wall, "eval_s": full_eval, "setup_warmup_and_final_save_s": base_wall - base_eval,
    }
    print(f"device {a.device}, {report['threads']} thread(s); HalfCheetah-v5, {a.warmup_steps} warmup + "
          f"{a.online_steps} online steps at default settings")
    print(f"learner-only bound      {bound:7.2f} env-steps/s   (samples {', '.join(f'{r:.2f}' for r in rates)})")
    print(f"real fine-tuning loop   {report['run_env_steps_per_s']:7.2f} env-steps/s   (online phase, evaluation excluded)")
    print(f"overhead outside the learner {100 * report['overhead_fraction']:5.1f}% of online wall time")
    print(f"evaluation              {full_eval:7.1f} s in the run (reported separately; 20 episodes at step 0 and at the end)")
    print(f"setup + warmup + final save {report['setup_warmup_and_final_save_s']:5.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
