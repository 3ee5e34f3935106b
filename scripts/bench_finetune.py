"""A short real `wsrl finetune` run against the learner-only bound: what the loop costs outside the update.

    python scripts/bench_finetune.py [--device cpu|cuda] [--precision fp32|bf16] [--online-steps 300] [--json out.json]

1. Learner-only bound: the WSRL update at its defaults on a random device-resident buffer, as in
   scripts/bench_learner.py (env-steps/s = updates/s, one update per env step).
2. Two real fine-tuning runs from scratch on HalfCheetah-v5 with the wsrl recipe's settings (10
   critics, UTD 4, batch 1024, 20 evaluation episodes, log every 1000 steps): one with W warmup steps plus
   N online steps, one with the same warmup plus 1 online step. Their difference, less evaluation
   time (reported separately), is what N - 1 online env steps cost in the real loop.
   overhead = 1 - (time the learner alone needs for N - 1 updates) / (that real time):
   env stepping, acting, buffer writes, sampling, the divergence guard and logging.
The learner bound is measured between the runs and again after them; the median is used.
With --precision bf16 all of it is measured in fp32, then in bf16, and the real loops compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_learner import ACT, OBS, random_buffer, timed  # noqa: E402

from wsrl.agents import SAC  # noqa: E402
from wsrl.config import FinetuneConfig  # noqa: E402
from wsrl.fast import make_update  # noqa: E402
from wsrl.nets import ActorCritic, set_precision  # noqa: E402
from wsrl.online import finetune  # noqa: E402
from wsrl.recipes import finetune_defaults  # noqa: E402


def recipe_config(precision: str, **fields) -> FinetuneConfig:
    """The wsrl recipe's fine-tuning settings on HalfCheetah (locomotion), from scratch."""
    cfg = finetune_defaults("HalfCheetah-v5", "wsrl", None, None)
    return replace(cfg, from_scratch=True, precision=precision, **fields)


def learner_rate(device: torch.device, seconds: float, precision: str) -> float:
    cfg = recipe_config(precision)
    model = ActorCritic(OBS, ACT, cfg.net, 1.0, 5.0).to(device)
    set_precision(model, precision)
    update = make_update(SAC(model, cfg.agent, cfg.net), cfg, device)
    buf = random_buffer(device)
    return timed(lambda: update(buf.sample(cfg.utd, cfg.batch_size // cfg.utd)), device, seconds)


def real_run(device: str, warmup: int, online: int, out: Path, precision: str) -> tuple[float, float]:
    """Wall seconds of one `wsrl finetune` run and the evaluation seconds inside it."""
    cfg = recipe_config(precision, env="HalfCheetah-v5", out=str(out), overwrite=True, device=device,
                        steps=warmup + online, warmup_steps=warmup)
    start = time.perf_counter()
    finetune(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, sum(r.get("perf/eval_seconds", 0.0) for r in rows)


def measure(device: torch.device, a, precision: str, tmp: Path) -> dict:
    rates = [learner_rate(device, a.seconds, precision)]
    full_wall, full_eval = real_run(a.device, a.warmup_steps, a.online_steps, tmp / "full", precision)
    rates.append(learner_rate(device, a.seconds, precision))
    base_wall, base_eval = real_run(a.device, a.warmup_steps, 1, tmp / "base", precision)
    rates.append(learner_rate(device, a.seconds, precision))
    bound = statistics.median(rates)
    steps = a.online_steps - 1
    online_seconds = (full_wall - full_eval) - (base_wall - base_eval)
    return {"learner_bound_env_steps_per_s": bound, "learner_bound_samples": rates,
            "run_env_steps_per_s": steps / online_seconds,
            "overhead_fraction": 1.0 - steps / bound / online_seconds,
            "run_wall_s": full_wall, "eval_s": full_eval, "setup_warmup_and_final_save_s": base_wall - base_eval}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--online-steps", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window of each learner-only measurement")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: the same measurements in bf16 after fp32's, and the ratio of the real loops")
    p.add_argument("--json", default="")
    a = p.parse_args()
    device = torch.device(a.device)
    precisions = ("fp32", "bf16") if a.precision == "bf16" else ("fp32",)
    with tempfile.TemporaryDirectory() as tmp:
        report = {prec: measure(device, a, prec, Path(tmp) / prec) for prec in precisions}
    report.update({"device": a.device, "threads": torch.get_num_threads(), "warmup_steps": a.warmup_steps,
                   "online_steps": a.online_steps})
    print(f"device {a.device}, {report['threads']} thread(s); HalfCheetah-v5, {a.warmup_steps} warmup + "
          f"{a.online_steps} online steps, the wsrl recipe's settings")
    for prec in precisions:
        r = report[prec]
        print(f"[{prec}] learner-only bound      {r['learner_bound_env_steps_per_s']:7.2f} env-steps/s   "
              f"(samples {', '.join(f'{x:.2f}' for x in r['learner_bound_samples'])})")
        print(f"[{prec}] real fine-tuning loop   {r['run_env_steps_per_s']:7.2f} env-steps/s   (online phase, evaluation excluded)")
        print(f"[{prec}] overhead outside the learner {100 * r['overhead_fraction']:5.1f}% of online wall time")
        print(f"[{prec}] evaluation              {r['eval_s']:7.1f} s in the run (reported separately; 20 episodes at step 0 and at the end)")
        print(f"[{prec}] setup + warmup + final save {r['setup_warmup_and_final_save_s']:5.1f} s")
    if a.precision == "bf16":
        report["bf16_over_fp32"] = report["bf16"]["run_env_steps_per_s"] / report["fp32"]["run_env_steps_per_s"]
        print(f"real fine-tuning loop, bf16 / fp32: {report['bf16_over_fp32']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
