import pytest

from prefrl.config import FeedbackConfig, TrainConfig
from prefrl.schedule import LabelSchedule


def sched(**fb):
    return LabelSchedule.from_config(TrainConfig(total_timesteps=100_000, feedback=FeedbackConfig(**fb)))


def test_offline_asks_everything_up_front():
    s = sched(total_labels=120, schedule="offline")
    assert s.target(0) == 120 and s.target(99_999) == 120


def test_online_starts_with_initial_fraction_and_ends_at_total():
    s = sched(total_labels=200, initial_fraction=0.25, labels_done_fraction=0.75)
    assert s.target(0) == 50
    assert s.target(75_000) == 200 and s.target(100_000) == 200


def test_online_rate_decays():
    s = sched(total_labels=1000, initial_fraction=0.1)
    gains = [s.target(t + 10_000) - s.target(t) for t in range(0, 70_000, 10_000)]
    assert all(a >= b for a, b in zip(gains, gains[1:])) and gains[0] > 2 * gains[-1]


@pytest.mark.parametrize("asked,due", [(0, 50), (50, 0), (70, 0)])
def test_due_never_negative(asked, due):
    assert sched(total_labels=200).due(0, asked) == due
