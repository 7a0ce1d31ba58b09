"""The trainer, two labelers (one in two tabs), the app's pages and `prefrl plot` on one run folder at once."""

from __future__ import annotations

import pytest

from concurrency import run_concurrency

pytestmark = pytest.mark.timeout(600)


def test_everything_at_once_on_one_run(tmp_path):
    pytest.importorskip("streamlit.testing.v1")
    f = run_concurrency(tmp_path / "run", seconds=25, log=tmp_path / "train.log")
    summary = f.summary()
    assert f.integrity == "ok", summary
    assert f.locked_errors == 0 and not f.errors_shown, (f.errors_shown[:5], summary)
    assert f.duplicate_labels == 0, summary
    assert not f.page_problems, f.page_problems[:5]
    assert f.answers_saved >= 10 and f.labels_by.get("bob", 0) > 0 and f.labels_by.get("oracle", 0) > 0, summary
    assert f.trainer_rollouts >= 2, (summary, (tmp_path / "train.log").read_text()[-2000:])
    assert f.trainer_exit in (0, 130), (summary, (tmp_path / "train.log").read_text()[-2000:])
    assert f.plot_runs >= 1 and not f.plot_failures, f.plot_failures[:3]
