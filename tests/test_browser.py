"""The label page in a real browser: Debian's chromium, driven by Python Playwright, against `streamlit run`.

Both clips must play, the arrow keys and `u` must answer and undo, and every label row must carry its
provenance. Needs /usr/bin/chromium (`make test` installs it); skipped with a message when it is missing.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
import demo  # noqa: E402
from prefrl.labels.store import LabelStore  # noqa: E402

pytestmark = pytest.mark.timeout(180)

VIDEO_STATE = """(slot) => [...document.querySelectorAll('.st-key-slot' + slot + ' video')].map(v => ({
    ready: v.readyState, width: v.videoWidth, error: v.error ? v.error.code : null, paused: v.paused,
    time: v.currentTime}))"""
MARKER = "() => { const m = document.querySelector('.prefrl-render'); return m ? {...m.dataset} : null; }"
KEY_ANSWERS = {"ArrowLeft": "left", "ArrowRight": "right", "ArrowUp": "equal", "ArrowDown": "cant_tell"}


def _chromium():
    if not Path(demo.CHROMIUM).exists():
        pytest.skip(f"{demo.CHROMIUM} is missing: `make test` installs Debian's chromium "
                    "(apt-get install -y chromium, as root); the browser test needs it")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")


def _wait(page, js: str, arg=None, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _shown_pair(page) -> int:
    """The pair on screen (waits for one: the empty page has a marker without a pair)."""
    marker = _wait(page, f"() => {{ const m = ({MARKER})(); return m && m.pair ? m : null; }}", what="a pair on screen")
    return int(marker["pair"])


def _wait_playing(page) -> list[dict]:
    """Both videos of the visible slot have a frame (readyState >= 2), a size, no error, and advance."""
    marker = _wait(page, MARKER, what="the pair marker")
    slot = marker["visible"]
    check = f"(s) => {{ const v = ({VIDEO_STATE})(s); return v.length === 2 && v.every(x => x.ready >= 2 && " \
            f"x.width > 0 && x.error === null) ? v : null; }}"
    states = _wait(page, check, slot, what="both videos to be playable")
    t0 = [s["time"] for s in states]
    deadline = time.monotonic() + 5.0  # headless Chromium without a GPU sometimes stalls a moment at the start
    while True:
        time.sleep(0.2)
        moved = page.evaluate(VIDEO_STATE, slot)
        if all(m["time"] != t for m, t in zip(moved, t0)):
            return states
        assert time.monotonic() < deadline, f"videos do not advance in 5 s: {t0} -> {moved}"


def test_label_page_in_chromium(tmp_path):
    sync_api = _chromium()
    run = tmp_path / "run"
    pair_ids = demo.make_run(run, pairs=6, model_version=3, rule="disagreement")
    db = run / "labels.sqlite"

    with demo.serve(run, tmp_path / "streamlit.log") as url, sync_api.sync_playwright() as pw:
        with demo.open_page(pw, url) as (page, errors):

            page.get_by_label("Labeler name").fill("bad name!")
            page.get_by_role("button", name="Start labeling").click()
            page.get_by_text("is not a usable labeler name").wait_for(timeout=15_000)
            page.get_by_label("Labeler name").fill("carol")
            page.get_by_role("button", name="Start labeling").click()

            assert _shown_pair(page) == pair_ids[0]
            _wait_playing(page)

            # (key, pair expected on screen before the key); "u" undoes the ArrowUp answer to pair 3.
            script = [("ArrowLeft", pair_ids[0]), ("ArrowRight", pair_ids[1]), ("ArrowUp", pair_ids[2]),
                      ("u", pair_ids[3]), ("ArrowDown", pair_ids[2]), ("ArrowLeft", pair_ids[3])]
            expected: dict[int, str] = {}
            for key, pair in script:
                assert _shown_pair(page) == pair, f"before {key}: expected pair {pair} on screen"
                time.sleep(0.15)  # so `seconds` is clearly > 0
                page.keyboard.press(key)
                if key == "u":
                    expected.popitem()
                    _wait(page, "(p) => { const m = document.querySelector('.prefrl-render'); "
                                "return m && m.dataset.pair === String(p); }", pair_ids[2], what="the undone pair")
                else:
                    expected[pair] = KEY_ANSWERS[key]
                    _wait(page, "(p) => { const m = document.querySelector('.prefrl-render'); "
                                "return m && m.dataset.pair !== String(p); }", pair, what=f"the pair after {pair}")
                n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM labels").fetchone()[0]
                assert n == len(expected), f"after {key}: {n} label rows, expected {len(expected)}"
            _wait_playing(page)  # the prefetched pair plays too
            page.screenshot(path=str(tmp_path / "label_page.png"), full_page=True)
            assert not errors, errors

    con = sqlite3.connect(db)
    rows = con.execute("SELECT l.pair_id, l.answer, l.labeler, l.seconds, l.model_version, p.rule, p.model_version "
                       "FROM labels l JOIN pairs p ON p.id = l.pair_id ORDER BY l.pair_id").fetchall()
    assert {r[0]: r[1] for r in rows} == expected
    for pair_id, answer, labeler, seconds, version, rule, pair_version in rows:
        assert labeler == "carol"
        assert 0 < seconds < 120, (pair_id, seconds)
        assert (rule, version) == ("disagreement", pair_version), pair_id
    assert (tmp_path / "label_page.png").stat().st_size > 0


def test_empty_run_page_refreshes_itself_when_pairs_arrive(tmp_path):
    sync_api = _chromium()
    run = tmp_path / "run"
    demo.make_run(run, pairs=0, length=8, side=32)
    with demo.serve(run, tmp_path / "streamlit.log") as url, sync_api.sync_playwright() as pw:
        with demo.open_page(pw, f"{url}/?labeler=dave") as (page, errors):
            page.get_by_text("no pending pairs yet").wait_for(timeout=20_000)
            with LabelStore(run / "labels.sqlite") as store:  # the trainer, at a rollout end
                store.add_clip("c001", 1, 0.0, 8, "clips/c001.npz", video="clips/c000.mp4")
                [pair] = store.add_pairs([("c000", "c001")], "random", model_version=0)
            t = time.monotonic()
            assert _shown_pair(page) == pair  # no click: the page looks again every few seconds
            assert time.monotonic() - t < 15
            _wait_playing(page)


def test_prefrl_app_off_localhost_needs_the_printed_token(tmp_path):
    """`prefrl app --address` other than 127.0.0.1 makes a token, prints the URL with it, keeps it off the command
    line, and the page refuses a browser without it. 127.0.0.2 is loopback too, so nothing is exposed here."""
    import os
    import re
    import signal
    import subprocess

    sync_api = _chromium()
    run = tmp_path / "run"
    demo.make_run(run, pairs=2, length=8, side=32)
    port = demo.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "prefrl", "app", str(run), "--address", "127.0.0.2", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        first = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.2:\d+/)\?token=([A-Za-z0-9_-]+)", first)
        assert m, first
        base, token = m.groups()
        assert token not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        demo.wait_healthy(base, proc, 60)
        with sync_api.sync_playwright() as pw:
            with demo.open_page(pw, f"{base}?labeler=erin&token=guess") as (page, errors):
                page.get_by_text("needs its access token").wait_for(timeout=20_000)
                assert page.locator(".st-key-ans_left").count() == 0
            with demo.open_page(pw, f"{base}?labeler=erin&token={token}") as (page, errors):
                assert _shown_pair(page) == 1
                _wait(page, "() => window.__prefrlKeys === true && "  # a key pressed before the listener is lost
                            "!!document.querySelector('.st-key-ans_left button:not([disabled])')", what="the key listener")
                page.keyboard.press("ArrowLeft")
                _wait(page, "() => { const m = document.querySelector('.prefrl-render'); "
                            "return m && m.dataset.pair === '2'; }", what="the second pair")
        with LabelStore(run / "labels.sqlite") as store:
            assert [(r.pair_id, r.labeler) for r in store.labels()] == [(1, "erin")]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
