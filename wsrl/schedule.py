"""Learning-rate schedules over the update count, written into the optimizers' lr tensors.

One update is one env step's worth online (``utd`` critic steps and one actor step) and one
gradient step offline, counted from the first update (after the warmup). The optimizers hold
their learning rate as a 0-dim tensor on the training device (``SAC.__init__``); ``apply``
overwrites it in place between updates, so a ``torch.compile``d or CUDA-graph-captured update,
which reads that tensor, follows the schedule without recompiling or recapturing. The factor is
computed on the host from the host's update counter: writing a Python float into a device
tensor queues a kernel and never waits for the device.
"""

from __future__ import annotations

from typing import Literal

import torch

from wsrl.errors import UserError

Schedule = Literal["constant", "rewarm", "wsd"]
OptimizerName = Literal["actor", "critic", "temperature", "value", "cql_alpha"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("actor", "critic", "temperature", "value", "cql_alpha")


def lr_factor(update: int, schedule: Schedule, total_updates: int, warmup_start: float, warmup_updates: int,
              decay_fraction: float, final: float) -> float:
    """The multiplier of the base lr for the update with index ``update`` (0 = the first update).

    rewarm: linear from ``warmup_start`` to 1, reached at update ``warmup_updates - 1``;
    wsd: the same ramp, then 1, then linear to ``final`` over the last ``decay_fraction`` of
    ``total_updates``, reached at the last update (and kept after it). Where ramp and decay
    overlap (a run shorter than both), the smaller factor wins.
    """
    if schedule == "constant":
        return 1.0
    warm = 1.0
    if warmup_updates > 0:
        warm = warmup_start + (1.0 - warmup_start) * min(1.0, (update + 1) / warmup_updates)
    if schedule == "rewarm":
        return warm
    decay_updates = max(1, round(decay_fraction * total_updates))
    into_decay = update + 1 - (total_updates - decay_updates)
    decay = 1.0 - (1.0 - final) * min(1.0, max(0, into_decay) / decay_updates)
    return min(warm, decay)


def check_schedule(cfg) -> None:
    """One clear line per bad schedule flag (``cfg``: a RunConfig)."""
    if cfg.lr_schedule == "constant":
        return
    if cfg.lr_warmup_updates < (1 if cfg.lr_schedule == "rewarm" else 0):
        raise UserError(f"--lr-warmup-updates {cfg.lr_warmup_updates}: must be positive with --lr-schedule rewarm "
                        f"(and at least 0 with wsd)")
    if not 0.0 <= cfg.lr_warmup_start <= 1.0:
        raise UserError(f"--lr-warmup-start {cfg.lr_warmup_start}: must be in [0, 1] (a fraction of the lr)")
    if cfg.lr_schedule == "wsd":
        if not 0.0 < cfg.lr_decay_fraction <= 1.0:
            raise UserError(f"--lr-decay-fraction {cfg.lr_decay_fraction}: must be in (0, 1]")
        if cfg.lr_final < 0.0:
            raise UserError(f"--lr-final {cfg.lr_final}: must be at least 0 (a fraction of the lr)")
    if not cfg.lr_schedule_on:
        raise UserError("--lr-schedule-on: names no optimizer (choose from " + ", ".join(OPTIMIZERS) + ")")


class LrSchedule:
    """Sets the lr tensors of the optimizers in ``cfg.lr_schedule_on`` for each update.

    ``base`` is each optimizer's configured lr; ``total_updates`` the run's updates (its
    ``--steps`` minus the first update step online, ``--steps`` offline), which only ``wsd`` uses.
    """

    def __init__(self, cfg, optimizers: dict[str, torch.optim.Optimizer], base: dict[str, float], total_updates: int):
        self.cfg, self.total_updates = cfg, total_updates
        self.targets = [(group["lr"], base[name]) for name in cfg.lr_schedule_on
                        for group in optimizers[name].param_groups]
        self._factor: float | None = None

    def factor(self, update: int) -> float:
        c = self.cfg
        return lr_factor(update, c.lr_schedule, self.total_updates, c.lr_warmup_start, c.lr_warmup_updates,
                         c.lr_decay_fraction, c.lr_final)

    def apply(self, update: int) -> None:
        """Before the update with index ``update``; writes only when the factor changes (for
        ``constant`` once, the value the tensor already holds), so the hot loop launches no
        kernel while the lr stays put."""
        factor = self.factor(update)
        if factor == self._factor:
            return
        self._factor = factor
        for lr, base in self.targets:
            lr.fill_(base * factor)
