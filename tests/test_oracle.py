"""Synthetic teachers on crafted clips: each imperfection does what B-Pref says, and only that."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from prefrl.config import FeedbackConfig
from prefrl.labels.oracle import SimulatedTeacher, make_teacher
from prefrl.labels.store import Answer

L, R, E, C = Answer.LEFT, Answer.RIGHT, Answer.EQUAL, Answer.CANT_TELL
T = 5


def _clips(returns: list[float]) -> np.ndarray:
    """Clips (N, T) whose rewards are spread evenly so that clip i returns returns[i]."""
    return np.repeat(np.asarray(returns, dtype=float)[:, None] / T, T, axis=1)


def test_oracle_picks_higher_return_and_equal_on_tie():
    left, right = _clips([3.0, 1.0, 2.0, -4.0]), _clips([1.0, 3.0, 2.0, -4.0 + 1e-9])
    assert SimulatedTeacher().answer(left, right) == [L, R, E, E]
    assert SimulatedTeacher(tie_tolerance=0).answer(left, right) == [L, R, E, R]
    assert SimulatedTeacher().answer(np.zeros((0, T)), np.zeros((0, T))) == []


def test_mistake_prob_one_always_flips():
    left, right = _clips([3.0, 1.0, 2.0]), _clips([1.0, 3.0, 2.0])
    assert SimulatedTeacher(mistake_prob=1.0).answer(left, right) == [R, L, E]


def test_mistake_rate_is_about_mistake_prob():
    left, right = _clips([1.0] * 2000), _clips([0.0] * 2000)
    answers = SimulatedTeacher(mistake_prob=0.2, rng=np.random.default_rng(0)).answer(left, right)
    assert 0.15 < answers.count(R) / 2000 < 0.25


def test_stochastic_small_beta_is_coin_flip_large_beta_is_oracle():
    rng = np.random.default_rng(0)
    n = 2000
    left, right = _clips(list(rng.normal(size=n))), _clips(list(rng.normal(size=n)))
    oracle = SimulatedTeacher().answer(left, right)
    noisy = SimulatedTeacher(beta=1e-4, rng=np.random.default_rng(1)).answer(left, right)
    sharp = SimulatedTeacher(beta=1e4, rng=np.random.default_rng(1)).answer(left, right)
    assert 0.45 < noisy.count(L) / n < 0.55
    assert 0.4 < np.mean([a == b for a, b in zip(noisy, oracle)]) < 0.6
    assert np.mean([a == b for a, b in zip(sharp, oracle)]) > 0.99


def test_stochastic_matches_bradley_terry():
    n = 4000
    answers = SimulatedTeacher(beta=1.0, rng=np.random.default_rng(2)).answer(_clips([1.0] * n), _clips([0.0] * n))
    p_left = 1 / (1 + math.exp(-1.0))
    assert abs(answers.count(L) / n - p_left) < 0.03


def test_skip_refuses_pairs_where_both_are_low():
    left, right = _clips([0.0, 0.0, 10.0, 10.0, 0.0]), _clips([1.0, 10.0, 0.0, 9.0, 0.0])
    # the batch's 10 returns: 0 x5, 1, 9, 10 x3; the 0.6 quantile is 4.2. Skipping comes before ties.
    assert SimulatedTeacher(skip_quantile=0.6).answer(left, right) == [C, R, L, L, C]
    assert SimulatedTeacher(skip_quantile=0.0).answer(left, right) == [R, R, L, L, E]


def test_equal_threshold():
    left, right = _clips([0.0, 5.0, 10.0, 0.0]), _clips([0.9, 4.0, 10.0, 10.0])
    std = np.std([0.0, 5.0, 10.0, 0.0, 0.9, 4.0, 10.0, 10.0])
    teacher = SimulatedTeacher(equal_fraction=1.05 / std)  # equal below a gap of 1.05
    assert teacher.answer(left, right) == [E, E, E, R]
    assert SimulatedTeacher(equal_fraction=0.95 / std).answer(left, right) == [E, L, E, R]


def test_myopic_prefers_late_reward_where_oracle_disagrees():
    early = np.array([[3.0, 0, 0, 0, 0]])  # larger total, all at the start
    late = np.array([[0, 0, 0, 0, 2.0]])
    assert SimulatedTeacher().answer(early, late) == [L]
    assert SimulatedTeacher(gamma=0.5).answer(early, late) == [R]
    assert SimulatedTeacher(gamma=0.5).answer(late, early) == [L]


def test_make_teacher_presets_and_names():
    cfg = FeedbackConfig(beta=2.0, mistake_prob=0.3, skip_quantile=0.4, equal_fraction=0.2, myopic_gamma=0.8,
                         tie_tolerance=1e-3)
    expected = {"oracle": {}, "stochastic": {"beta": 2.0}, "mistake": {"mistake_prob": 0.3},
                "skip": {"skip_quantile": 0.4}, "equal": {"equal_fraction": 0.2}, "myopic": {"gamma": 0.8}}
    default = SimulatedTeacher()
    for name, changed in expected.items():
        teacher = make_teacher(dataclasses.replace(cfg, teacher=name), seed=0)
        assert teacher.name == ("oracle" if name == "oracle" else f"teacher:{name}")
        assert teacher.tie_tolerance == 1e-3
        for f in ("beta", "gamma", "mistake_prob", "skip_quantile", "equal_fraction"):
            assert getattr(teacher, f) == changed.get(f, getattr(default, f)), (name, f)


def test_make_teacher_unknown_name():
    with pytest.raises(ValueError, match="unknown teacher 'sloppy'; use one of oracle, stochastic, mistake, skip"):
        make_teacher(FeedbackConfig(teacher="sloppy"), seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["stochastic", "mistake"])
def test_same_seed_same_answers(name):
    rng = np.random.default_rng(3)
    left, right = rng.normal(size=(200, T)), rng.normal(size=(200, T))
    cfg = FeedbackConfig(teacher=name, mistake_prob=0.5)
    first = make_teacher(cfg, seed=7).answer(left, right)
    assert make_teacher(cfg, seed=7).answer(left, right) == first
    assert make_teacher(cfg, seed=8).answer(left, right) != first


def test_bad_settings_and_shapes_raise():
    with pytest.raises(ValueError, match="gamma"):
        SimulatedTeacher(gamma=0.0)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        SimulatedTeacher().answer(np.zeros((2, T)), np.zeros((3, T)))
