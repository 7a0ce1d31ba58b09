"""End to end, `--labeler human`: the test is the person. It answers in Chromium while the trainer runs.

`prefrl train --labeler human` runs in one subprocess and `prefrl app` in another; the test opens the app
in Debian's chromium (Python Playwright), reads which pair is on screen (the page's `.prefrl-render`
marker), looks up both clips' `true_return` in labels.sqlite and presses the arrow key a perfect oracle
would press. It keeps answering while PPO trains, until the trainer exits. Then the label rows must be
ours (with provenance and time taken), and the reward model must have been refit on labels that were
given through the browser after the first fit: that is the whole human loop, with nothing mocked.

Needs /usr/bin/chromium (`make test` installs it); skipped with a message when it is missing.
"""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
import demo  # noqa: E402  (CHROMIUM, CHROMIUM_ARGS, free_port; no torch)

TOTAL_TIMESTEPS = 4096  # 8 rollouts of 2 envs x 256 steps
LABELER = "e2e_oracle"
MARKER = "() => { const m = document.querySelector('.prefrl-render'); return m ? {...m.dataset} : null; }"
MOVED_ON = "(p) => { const m = document.querySelector('.prefrl-render'); return !!m && m.dataset.pair !== p; }"
VIDEOS_READY = """(slot) => { const v = [...document.querySelectorAll('.st-key-slot' + slot + ' video')];
    return v.length === 2 && v.every(x => x.readyState >= 2 && x.videoWidth > 0 && x.error === null); }"""
KEY_OF = {"left": "ArrowLeft", "right": "ArrowRight", "equal": "ArrowUp"}
KEYS_READY = "() => window.__prefrlKeys === true && !!document.querySelector('.st-key-ans_left button:not([disabled])')"


def _chromium():
    if not Path(demo.CHROMIUM).exists():
        pytest.skip(f"{demo.CHROMIUM} is missing: `make test` installs Debian's chromium "
                    "(apt-get install -y chromium, as root); the browser test needs it")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")


def _wait_for(check, timeout: float, what: str, procs: dict | None = None, poll: float = 0.2):
    """Poll check() until it is truthy; fail early (with the log's tail) when a watched process dies."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for name, (proc, log) in (procs or {}).items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                     f"{_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _query(db: Path, sql: str, params=()) -> list[tuple]:
    """A short-lived read-only connection (the trainer and the app write the same file)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        con.close()


def _oracle_answer(db: Path, pair_id: int) -> str:
    """What a perfect teacher answers for a pair: the clip with the higher true return."""
    [(left, right)] = _query(db, "SELECT l.true_return, r.true_return FROM pairs p JOIN clips l ON l.id = "
                                 "p.left_clip JOIN clips r ON r.id = p.right_clip WHERE p.id = ?", (pair_id,))
    return "left" if left > right else "right" if right > left else "equal"


def _start(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as fh:  # a session of its own: the whole group is killed at the end
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def _kill(proc: subprocess.Popen | None) -> None:
    """Stop a process we started and its children (its own process group)."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.timeout(300)
def test_browser_labels_during_training_refit_the_reward_model(tmp_path):
    sync_api = _chromium()
    run = tmp_path / "run"
    db = run / "labels.sqlite"
    train_log, app_log = tmp_path / "train.log", tmp_path / "app.log"
    trainer = app = None
    answered: dict[int, str] = {}
    try:
        trainer = _start([sys.executable, "-m", "prefrl", "train", "--labeler", "human", "--env", "Pendulum-v1",
                          "--run-dir", str(run), "--total-timesteps", str(TOTAL_TIMESTEPS), "--n-steps", "256",
                          "--n-envs", "2", "--total-labels", "12", "--clip-length", "20", "--eval-episodes", "1",
                          "--pretrain-epochs", "10", "--epochs", "5", "--refit-growth", "0", "--no-progress-bar"],
                         train_log, tmp_path)
        procs = {"the trainer": (trainer, train_log)}
        _wait_for(lambda: f"prefrl app {run}" in _tail(train_log, 100_000), 120,
                  "the trainer to print the app command", procs)
        initial = _wait_for(lambda: _query(db, "SELECT COUNT(*) FROM pairs p WHERE NOT EXISTS "
                                               "(SELECT 1 FROM labels l WHERE l.pair_id = p.id)")[0][0],
                            30, "pending pairs in labels.sqlite", procs)
        assert trainer.poll() is None, "the trainer must wait for the first labels"

        port = demo.free_port()
        app = _start([sys.executable, "-m", "prefrl", "app", str(run), "--port", str(port),
                      "--results", str(tmp_path)], app_log, tmp_path)
        url = f"http://127.0.0.1:{port}"
        procs["the app"] = (app, app_log)
        _wait_for(lambda: _healthy(url), 60, f"the app on {url}", procs)

        with sync_api.sync_playwright() as pw:
            with demo.open_page(pw, url) as (page, errors):
                page.get_by_label("Labeler name").fill(LABELER)
                page.get_by_role("button", name="Start labeling").click()

                def shown() -> dict | None:
                    m = page.evaluate(MARKER)
                    return m if m and m.get("pair") and int(m["pair"]) not in answered else None

                # The first pair: the trainer's H.264 clips decode and play in chromium.
                marker = _wait_for(shown, 60, "the first pair on screen", procs)
                _wait_for(lambda: page.evaluate(VIDEOS_READY, marker["visible"]), 30,
                          "both videos of the first pair to be playable", procs)

                # Answer every pair as it comes, as an oracle on the true return, until training ends.
                while trainer.poll() is None:
                    marker = shown()
                    if marker is None:  # nothing new yet: the page looks again every few seconds
                        time.sleep(0.2)
                        continue
                    pair = int(marker["pair"])
                    answer = _oracle_answer(db, pair)
                    time.sleep(0.1)  # the pair has been on screen a moment: `seconds` is clearly > 0
                    # a key pressed before the listener exists, or while the answer buttons are still disabled
                    # during a re-render, is dropped by the page (seen once in a loaded fresh-clone CI run)
                    _wait_for(lambda: page.evaluate(KEYS_READY), 30, "the key listener and enabled answer buttons",
                              {"the app": (app, app_log)}, poll=0.05)
                    page.keyboard.press(KEY_OF[answer])
                    answered[pair] = answer
                    _wait_for(lambda: page.evaluate(MOVED_ON, str(pair)),
                              30, f"the page to move on from pair {pair}", {"the app": (app, app_log)}, poll=0.05)
                assert not errors, errors
        rc = trainer.wait(30)
        assert rc == 0, f"the trainer exited with {rc}:\n{_tail(train_log)}"
    finally:
        _kill(app)
        _kill(trainer)

    # Every browser answer is one label row, ours, with the oracle's answer and the time it took.
    rows = _query(db, "SELECT pair_id, answer, labeler, seconds, model_version FROM labels ORDER BY id")
    assert {r[2] for r in rows} == {LABELER}, f"labels by someone else: {rows}"
    assert {r[0]: r[1] for r in rows} == answered
    assert len(rows) == len(answered) > initial, "no label was given after the initial pairs"
    assert all(0 < r[3] < 120 for r in rows), [r[3] for r in rows]

    # Labels given during training (after the first fit: stamped with version >= 1) were picked up
    # by the trainer and refit the reward model: a later progress row has a higher ensemble version.
    with open(run / "progress.csv", newline="") as fh:
        progress = list(csv.DictReader(fh))
    versions = [int(r["reward_model_version"]) for r in progress]
    labels = [int(r["labels"]) for r in progress]
    assert int(progress[-1]["env_steps"]) == TOTAL_TIMESTEPS
    assert versions == sorted(versions) and versions[0] >= 1, versions
    assert max(labels) > initial, f"the trainer never saw a label beyond the initial {initial}: {labels}"
    assert versions[-1] >= 2, f"no refit after the initial fit: {versions}"
    # The k-th label (ids count up; nothing was undone), stamped with the version it was given under:
    # some progress row counts it among its labels and already has a newer ensemble.
    refit_on = [(k, v) for k, (_, _, _, _, v) in enumerate(rows, start=1)
                if v >= 1 and any(n >= k and w > v for n, w in zip(labels, versions))]
    assert refit_on, f"no browser label given after the first fit led to a refit: labels {rows}, " \
                     f"progress labels {labels}, versions {versions}"
    [(meta,)] = _query(db, "SELECT value FROM meta WHERE key = 'reward_model_version'")
    assert int(meta) == versions[-1], (meta, versions)
