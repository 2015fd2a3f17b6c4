"""The learning-rate schedule, as a factor of the base lr per optimizer step (minibatch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from lookaround_fused.train.config import TrainConfig


@dataclass
class LearningRateSchedule:
    """Linear warm-up, then cosine decay to ``min_lr`` or steps down by ``gamma`` at milestones.

    With ``swa_start`` set (SWA runs), the factor anneals over one epoch from that point
    to ``swa_lr`` (cosine, as torch.optim.swa_utils.SWALR does) and stays there.
    All counts are in minibatches except ``milestones``, which are epochs.
    """

    base_lr: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    kind: str
    milestones: tuple[int, ...]
    gamma: float
    min_lr: float
    swa_start_step: int | None = None
    swa_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if self.swa_start_step is not None and step >= self.swa_start_step:
            start = self._decay(self.swa_start_step)
            progress = min(1.0, (step - self.swa_start_step) / self.steps_per_epoch)
            target = self.swa_lr / self.base_lr
            return target + (start - target) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self._decay(step)

    def _decay(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "multistep":
            epoch = step // self.steps_per_epoch
            return self.gamma ** sum(epoch >= milestone for milestone in self.milestones)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        floor = self.min_lr / self.base_lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, swa: bool) -> LambdaLR:
    """A scheduler to step once per minibatch; ``swa`` adds the SWA phase from ``cfg.swa_start``."""
    schedule = LearningRateSchedule(
        base_lr=cfg.lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch,
        kind=cfg.schedule,
        milestones=cfg.milestones,
        gamma=cfg.gamma,
        min_lr=cfg.min_lr,
        swa_start_step=cfg.swa_start * steps_per_epoch if swa else None,
        swa_lr=cfg.swa_lr,
    )
    return LambdaLR(optimizer, schedule)
