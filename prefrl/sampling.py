"""Pair selection: which clip pairs to ask a labeler about."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from prefrl.clips import Clip

ClipScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(obs (N, T, ...), acts (N, T, ...)) -> (M, N): each ensemble member's predicted return per clip."""


class Choice(NamedTuple):
    left: int  # index into the candidate clips
    right: int
    rule: str
    disagreement: Optional[float]


class PairSampler(Protocol):
    def select(self, clips: Sequence[Clip], n: int, rng: np.random.Generator) -> list[Choice]: ...


def random_pairs(n_clips: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) index pairs with left != right."""
    left = rng.integers(0, n_clips, size=n)
    right = (left + rng.integers(1, n_clips, size=n)) % n_clips
    return np.stack([left, right], axis=1)


class RandomSampler:
    def select(self, clips: Sequence[Clip], n: int, rng: np.random.Generator) -> list[Choice]:
        return [Choice(int(a), int(b), "random", None) for a, b in random_pairs(len(clips), n, rng)]


class DisagreementSampler:
    """Score `factor` x n random pairs and keep the n where the members' P(left) varies most.

    Falls back to random pairs (and records the rule as such) while the ensemble is
    unfit or has a single member, since there is no disagreement to measure then.
    """

    def __init__(self, scorer: ClipScorer, factor: int = 10, ready: Callable[[], bool] = lambda: True):
        self.scorer = scorer
        self.factor = factor
        self.ready = ready

    def select(self, clips: Sequence[Clip], n: int, rng: np.random.Generator) -> list[Choice]:
        if not self.ready():
            return RandomSampler().select(clips, n, rng)
        cand = random_pairs(len(clips), n * self.factor, rng)
        used = np.unique(cand)
        scored = self.scorer(np.stack([clips[i].obs for i in used]), np.stack([clips[i].acts for i in used]))
        if scored.shape[0] < 2:
            return RandomSampler().select(clips, n, rng)
        returns = np.zeros((scored.shape[0], len(clips)))
        returns[:, used] = scored
        p_left = 1.0 / (1.0 + np.exp(-(returns[:, cand[:, 0]] - returns[:, cand[:, 1]])))
        var = p_left.var(axis=0)
        keep = np.argsort(-var, kind="stable")[:n]
        return [Choice(int(cand[k, 0]), int(cand[k, 1]), "disagreement", float(var[k])) for k in keep]


def make_sampler(name: str, scorer: ClipScorer, factor: int, ready: Callable[[], bool]) -> PairSampler:
    if name == "random":
        return RandomSampler()
    if name == "disagreement":
        return DisagreementSampler(scorer, factor, ready)
    raise ValueError(f"unknown sampler '{name}'; use random or disagreement")
