"""Synthetic teachers: answer pairs from the clips' true rewards (B-Pref, Lee et al. 2021).

One composable teacher covers the perfect oracle and B-Pref's imperfect ones (stochastic,
mistaken, myopic, skipping, equal-threshold), so an ablation changes one number rather than
a class. numpy only: the teacher runs in the trainer and must not need torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from prefrl.config import FeedbackConfig
from prefrl.labels.store import Answer

_TEACHER_STREAM = 0x7EAC4E2
"""Mixed into the run seed so the teacher's random stream differs from others seeded with it."""


class Teacher(Protocol):
    name: str
    """Stored as the label's `labeler`."""

    def answer(self, left_rews: np.ndarray, right_rews: np.ndarray) -> list[Answer]:
        """Answers for N pairs, from the true rewards (N, T) of the left and right clips."""
        ...


@dataclass
class SimulatedTeacher:
    """Answers by comparing (possibly discounted) true returns, with B-Pref's imperfections.

    Steps, in order: skip (cant_tell), equal threshold, near-tie, choose (Bradley-Terry sample
    or argmax), mistake flip. The defaults are the perfect oracle.
    """

    name: str = "oracle"
    beta: float = math.inf
    """Bradley-Terry rationality: P(left) = sigmoid(beta * (R_l - R_r)); inf answers deterministically."""
    gamma: float = 1.0
    """Myopia: R = sum_t gamma^(T-1-t) r_t, so the end of a clip weighs most."""
    mistake_prob: float = 0.0
    """Chance of swapping a left/right answer."""
    skip_quantile: float | None = None
    """cant_tell when both returns are below this quantile of the batch's 2N returns."""
    equal_fraction: float | None = None
    """equal when |R_l - R_r| < equal_fraction * std of the batch's 2N returns."""
    tie_tolerance: float = 1e-6
    """equal when |R_l - R_r| <= tie_tolerance * max(1, mean |r| * T): float noise is not a preference."""
    rng: np.random.Generator = field(default_factory=np.random.default_rng, repr=False)

    def __post_init__(self) -> None:
        checks = [
            (self.beta > 0, f"beta must be > 0 (got {self.beta})"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1] (got {self.gamma})"),
            (0 <= self.mistake_prob <= 1, f"mistake_prob must be in [0, 1] (got {self.mistake_prob})"),
            (self.skip_quantile is None or 0 <= self.skip_quantile <= 1,
             f"skip_quantile must be in [0, 1] or None (got {self.skip_quantile})"),
            (self.equal_fraction is None or self.equal_fraction >= 0,
             f"equal_fraction must be >= 0 or None (got {self.equal_fraction})"),
            (self.tie_tolerance >= 0, f"tie_tolerance must be >= 0 (got {self.tie_tolerance})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def returns(self, rews: np.ndarray) -> np.ndarray:
        """Returns (N,) the teacher perceives for rewards (N, T)."""
        weights = self.gamma ** np.arange(rews.shape[1] - 1, -1, -1, dtype=np.float64)
        return rews @ weights

    def answer(self, left_rews: np.ndarray, right_rews: np.ndarray) -> list[Answer]:
        left = np.asarray(left_rews, dtype=np.float64)
        right = np.asarray(right_rews, dtype=np.float64)
        if left.ndim != 2 or left.shape != right.shape:
            raise ValueError(f"left and right rewards must both be (N, T) arrays (got {left.shape} and {right.shape})")
        n, t = left.shape
        r_left, r_right = self.returns(left), self.returns(right)
        diff = r_left - r_right
        both = np.concatenate([r_left, r_right])

        # Draw every random number up front so a batch's answers depend only on the seed.
        pick_left = diff > 0
        if math.isfinite(self.beta):
            p_left = 0.5 * (1 + np.tanh(self.beta * diff / 2))  # sigmoid without overflow
            pick_left = self.rng.random(n) < p_left
        if self.mistake_prob > 0:
            pick_left ^= self.rng.random(n) < self.mistake_prob

        scale = np.maximum(1.0, np.abs(np.concatenate([left, right], axis=1)).mean(axis=1) * t)
        equal = np.abs(diff) <= self.tie_tolerance * scale
        if self.equal_fraction is not None and n > 0:
            equal |= np.abs(diff) < self.equal_fraction * both.std()
        skip = np.zeros(n, dtype=bool)
        if self.skip_quantile is not None and n > 0:
            threshold = np.quantile(both, self.skip_quantile)
            skip = (r_left < threshold) & (r_right < threshold)

        return [Answer.CANT_TELL if s else Answer.EQUAL if e else Answer.LEFT if lt else Answer.RIGHT
                for s, e, lt in zip(skip, equal, pick_left)]


def make_teacher(cfg: FeedbackConfig, seed: int) -> SimulatedTeacher:
    """The B-Pref teacher named by `cfg.teacher`, each with a single imperfection."""
    presets = {
        "oracle": {},
        "stochastic": {"beta": cfg.beta},
        "mistake": {"mistake_prob": cfg.mistake_prob},
        "skip": {"skip_quantile": cfg.skip_quantile},
        "equal": {"equal_fraction": cfg.equal_fraction},
        "myopic": {"gamma": cfg.myopic_gamma},
    }
    if cfg.teacher not in presets:
        raise ValueError(f"unknown teacher '{cfg.teacher}'; use one of {', '.join(presets)}")
    name = "oracle" if cfg.teacher == "oracle" else f"teacher:{cfg.teacher}"
    return SimulatedTeacher(name=name, tie_tolerance=cfg.tie_tolerance,
                            rng=np.random.default_rng([seed, _TEACHER_STREAM]), **presets[cfg.teacher])
