"""Label schedules: how many labels should exist by a given env step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prefrl.config import TrainConfig


@dataclass(frozen=True)
class LabelSchedule:
    """Cumulative label target.

    online: `initial` labels from the initial policy, then a rate proportional to the
    paper's c/(T+c), whose integral gives c*log(1 + T/c); the last label is due at
    `end_step`. offline: every label from the initial policy, none later.
    """

    total: int
    initial: int
    rate_constant: float
    end_step: int

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "LabelSchedule":
        fb = cfg.feedback
        if fb.schedule == "offline":
            initial = fb.total_labels
        else:
            initial = min(fb.total_labels, max(2, round(fb.total_labels * fb.initial_fraction)))
        end = max(1, int(cfg.total_timesteps * fb.labels_done_fraction))
        return cls(fb.total_labels, initial, cfg.rate_constant, end)

    def target(self, step: int) -> int:
        """Labels that should have been asked for by env step `step` (PPO steps, 0 = before training)."""
        if self.total == self.initial:
            return self.total
        c = self.rate_constant
        frac = math.log1p(min(max(step, 0), self.end_step) / c) / math.log1p(self.end_step / c)
        return min(self.total, self.initial + int(round((self.total - self.initial) * frac)))

    def due(self, step: int, asked: int) -> int:
        return max(0, self.target(step) - asked)
