"""kill -9 at every phase of a real run, resume, and check that nothing was lost (see faultlib.py).
The CI campaign also leaves a torn progress.csv row after its first kill, which the next resume must drop."""

from __future__ import annotations

import pytest

from faultlib import campaign_specs, run_campaign

pytestmark = pytest.mark.timeout(900)

CI_KILLS = ["label_write:3", "gather:2", "refit:2:30", "ppo_update:2:80", "checkpoint:2", "checkpoint_pointer:1",
            "progress:2", "random:6"]
"""One kill in each phase (the n-th time the process reaches it) and one at a random moment."""


def test_kills_at_every_phase_lose_nothing(tmp_path):
    c = run_campaign(tmp_path / "run", CI_KILLS, tmp_path / "train.log", tear_after=1)
    assert not c.all_problems, c.all_problems
    assert c.finished and c.final_labels == 40 and c.torn
    hook_kills = [k for k in c.kills if not k.spec.startswith("random")]
    assert all(k.killed for k in hook_kills), [(k.spec, k.killed) for k in hook_kills]  # each point was reached


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_campaign(tmp_path, seed):
    """The long campaign of `make reliability`: 9 kills per run (7 at phases, 2 at random moments), 24 rollouts."""
    c = run_campaign(tmp_path / "run", campaign_specs(7, 2, seed), tmp_path / "train.log", total_steps=12288)
    assert not c.all_problems, c.all_problems
    assert c.finished and c.n_killed >= 6
