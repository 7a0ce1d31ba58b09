"""The Streamlit app without a browser (streamlit.testing.v1.AppTest): every answer path of the label page,
its error paths, the runs page, and the rule that the app never imports torch."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="streamlit is not installed: pip install -e '.[test]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

from prefrl.labels.store import Answer, LabelRecord, LabelStore, StoreError  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app"
sys.path.insert(0, str(APP))
import demo  # noqa: E402
import shared  # noqa: E402

LABEL_PAGE = str(APP / "Label.py")
RUNS_PAGE = str(APP / "pages" / "1_Runs.py")
N_PAIRS = 4
ANSWER_KEYS = {a: f"ans_{a.value}" for a in Answer}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One fake run (4 pending pairs, 5 tiny MP4s); each test gets a copy."""
    run = tmp_path_factory.mktemp("template") / "run"
    demo.make_run(run, pairs=N_PAIRS, model_version=3, rule="disagreement", length=8, side=32)
    return run


@pytest.fixture
def run(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


def _label_app(run: Path, labeler: str | None = "alice") -> AppTest:
    at = AppTest.from_file(LABEL_PAGE, default_timeout=30)
    at.session_state[shared.RUN_KEY] = str(run)
    if labeler is not None:
        at.session_state["labeler"] = labeler
    return at.run()


def _shown(at: AppTest) -> int:
    return at.session_state["slots"][at.session_state["visible"]]


def _texts(elements) -> str:
    return " | ".join(str(e.value) for e in elements)


def _labels(run: Path) -> list[LabelRecord]:
    with LabelStore(run / "labels.sqlite") as store:
        return store.labels()


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# --- the label page: answers ---------------------------------------------------------------

@pytest.mark.parametrize("answer", list(Answer))
def test_each_answer_is_stored_with_provenance_and_the_next_pair_shows(run, answer):
    at = _label_app(run)
    assert not at.exception
    assert _shown(at) == 1
    assert at.session_state["slots"][1 - at.session_state["visible"]] == 2  # prefetched
    assert _metric(at, "pending for you") == str(N_PAIRS)
    time.sleep(0.05)
    at.button(key=ANSWER_KEYS[answer]).click().run()
    assert not at.exception
    [rec] = _labels(run)
    assert (rec.pair_id, rec.answer, rec.labeler) == (1, answer, "alice")
    assert (rec.rule, rec.model_version) == ("disagreement", 3)  # provenance from the pair
    assert rec.seconds >= 0.05
    assert _shown(at) == 2
    assert _metric(at, "pending for you") == str(N_PAIRS - 1)
    assert _metric(at, "labels by alice") == "1"
    assert "Last: pair 1" in _texts(at.caption)


def test_undo_deletes_my_last_label_and_shows_that_pair_again(run):
    at = _label_app(run)
    at.button(key="undo").click().run()
    assert "nothing to undo" in _texts(at.info)
    at.button(key="ans_left").click().run()
    at.button(key="ans_right").click().run()
    assert [r.pair_id for r in _labels(run)] == [1, 2]
    with LabelStore(run / "labels.sqlite") as store:  # someone else's label is never undone
        store.add_label(3, "equal", labeler="bob", seconds=1.0, model_version=3)
    at.button(key="undo").click().run()
    assert not at.exception
    assert [(r.pair_id, r.labeler) for r in _labels(run)] == [(1, "alice"), (3, "bob")]
    assert "undid your answer to pair 2" in _texts(at.info)
    assert _shown(at) == 2
    at.button(key="ans_equal").click().run()
    mine = [(r.pair_id, r.answer) for r in _labels(run) if r.labeler == "alice"]
    assert mine == [(1, Answer.LEFT), (2, Answer.EQUAL)]
    assert _shown(at) == 3  # bob's label does not take pair 3 from alice


def test_pair_answered_meanwhile_says_so_and_moves_on(run):
    at = _label_app(run)
    assert _shown(at) == 1
    with LabelStore(run / "labels.sqlite") as store:  # the same labeler in a second tab
        store.add_label(1, "right", labeler="alice", seconds=2.0, model_version=3)
    at.button(key="ans_left").click().run()
    assert not at.exception
    assert "pair 1 was already answered; moving on" in _texts(at.warning)
    assert [(r.pair_id, r.answer) for r in _labels(run)] == [(1, Answer.RIGHT)]  # never overwritten
    assert _shown(at) == 2


def test_labels_carry_the_newest_reward_model_version(run):
    with LabelStore(run / "labels.sqlite") as store:  # the trainer refit since the pair was chosen
        store.set_meta(shared.MODEL_VERSION_KEY, "7")
    at = _label_app(run)
    at.button(key="ans_left").click().run()
    [rec] = _labels(run)
    assert rec.model_version == 7


def test_all_pairs_answered_then_waits_for_more(run):
    at = _label_app(run)
    for _ in range(N_PAIRS):
        at.button(key="ans_cant_tell").click().run()
    assert len(_labels(run)) == N_PAIRS
    assert "no pending pairs yet" in _texts(at.info)
    assert not [b for b in at.button if b.key == "ans_left"]
    at.button(key="undo").click().run()  # the last answer can be undone too
    assert _shown(at) == N_PAIRS and len(_labels(run)) == N_PAIRS - 1


# --- the label page: error paths ------------------------------------------------------------

def test_labeler_name_is_asked_once_and_checked(run):
    at = _label_app(run, labeler=None)
    assert not [b for b in at.button if b.key == "ans_left"]
    for bad in ("", "two words", "x" * 41, "semi;colon", "ümlaut"):
        at.text_input(key="_labeler_input").input(bad)
        at.button[0].click().run()
        assert not at.exception
        assert "is not a usable labeler name" in _texts(at.error), bad
        assert "labeler" not in at.session_state
    at.text_input(key="_labeler_input").input("dana.k-2")
    at.button[0].click().run()
    assert at.session_state["labeler"] == "dana.k-2"
    assert at.query_params["labeler"] == "dana.k-2"  # a reload keeps the name
    at.button(key="ans_left").click().run()
    assert _labels(run)[0].labeler == "dana.k-2"


def test_labeler_from_the_url(run):
    at = AppTest.from_file(LABEL_PAGE, default_timeout=30)
    at.session_state[shared.RUN_KEY] = str(run)
    at.query_params["labeler"] = "erin"
    at.run()
    assert at.session_state["labeler"] == "erin"
    assert _shown(at) == 1


def test_missing_video_names_the_file_and_offers_to_skip(run):
    (run / "clips" / "c000.mp4").unlink()
    at = _label_app(run)
    assert not at.exception
    text = _texts(at.error) + _texts(at.warning)
    assert "c000" in text and "c000.mp4 is missing" in text
    assert at.button(key="ans_left").disabled
    at.button(key="skip").click().run()
    assert _shown(at) == 2
    assert not at.button(key="ans_left").disabled
    at.button(key="ans_left").click().run()
    assert [r.pair_id for r in _labels(run)] == [2]


def test_skipping_every_pair_offers_them_again(tmp_path):
    run = tmp_path / "run"
    demo.make_run(run, pairs=1, length=4, side=16, video_for="none")
    at = _label_app(run)
    assert "has no video" in _texts(at.error)
    at.button(key="skip").click().run()
    assert "you skipped all 1 remaining pair" in _texts(at.info)
    next(b for b in at.button if b.label.startswith("Show skipped")).click().run()
    assert _shown(at) == 1


def test_empty_run_says_pairs_come_at_rollout_end_and_refreshes(tmp_path):
    run = tmp_path / "run"
    demo.make_run(run, pairs=0, length=4, side=16)
    at = _label_app(run)
    assert not at.exception
    assert "no pending pairs yet — the trainer adds them at each rollout end" in _texts(at.info)
    with LabelStore(run / "labels.sqlite") as store:  # the trainer adds pairs while the page is open
        store.add_clip("c001", 1, 0.0, 4, "clips/c001.npz", video="clips/c000.mp4")
        store.add_pairs([("c000", "c001")], "random", model_version=0)
    at.button(key="refresh").click().run()
    assert _shown(at) == 1


@pytest.mark.parametrize("kind", ["not_sqlite", "newer_schema"])
def test_unusable_store_shows_the_store_error_without_traceback(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    db = run / "labels.sqlite"
    if kind == "not_sqlite":
        db.write_bytes(b"this is not a database, just some bytes " * 100)
    else:
        con = sqlite3.connect(db)
        con.execute("PRAGMA user_version = 99")
        con.close()
    for page in (LABEL_PAGE, RUNS_PAGE):
        at = AppTest.from_file(page, default_timeout=30)
        at.session_state[shared.RUN_KEY] = str(run)
        at.session_state["labeler"] = "alice"
        at.run()
        assert not at.exception, page
        msg = _texts(at.error)
        assert ("not a usable label database" if kind == "not_sqlite" else "newer prefrl") in msg, (page, msg)


def test_no_run_folder_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["Label.py", "--results", str(tmp_path / "nothing")])
    at = AppTest.from_file(LABEL_PAGE, default_timeout=30).run()
    assert not at.exception
    assert "No run yet" in _texts(at.info)


def test_default_run_is_the_newest_under_results(template, tmp_path, monkeypatch):
    results = tmp_path / "results"
    old, new = results / "a__old", results / "b__new"
    shutil.copytree(template, old)
    shutil.copytree(template, new)
    (results / "bench").mkdir()  # no labels.sqlite: not a run
    now = time.time()
    os.utime(old / "config.json", (now, now))
    os.utime(new / "config.json", (now - 100, now - 100))
    assert shared.find_runs(results) == [old, new]
    monkeypatch.setattr(sys, "argv", ["Label.py", "--results", str(results)])
    at = AppTest.from_file(LABEL_PAGE, default_timeout=30)
    at.session_state["labeler"] = "alice"
    at.run()
    assert at.session_state[shared.RUN_KEY] == str(old)
    assert _shown(at) == 1
    assert shared.parse_args(["--run", "x", "--foo"]).run == Path("x")


# --- the runs page and the statistics ---------------------------------------------------------

def test_runs_page_shows_curves_labels_speed_and_agreement(run):
    with LabelStore(run / "labels.sqlite") as store:
        for labeler, answers, seconds in (("alice", "lrl", 2.0), ("bob", "lre", 4.0), ("oracle", "l", 0.0)):
            for pair_id, a in enumerate(answers, start=1):
                store.add_label(pair_id, {"l": "left", "r": "right", "e": "equal"}[a], labeler, seconds, 3)
    at = AppTest.from_file(RUNS_PAGE, default_timeout=30)
    at.session_state[shared.RUN_KEY] = str(run)
    at.run()
    assert not at.exception
    assert _metric(at, "labels") == "7"
    assert _metric(at, "labelers") == "3"
    assert _metric(at, "repeated pairs") == "3"
    assert _metric(at, "all labelers agree") == "67%"  # pairs 1 (l,l,l) and 2 (r,r) agree; 3 (l,e) does not
    page = _texts(at.markdown) + _texts(at.caption) + _texts(at.subheader)
    assert "TRUE episode return" in page and "REWARD MODEL" in page
    speed = at.dataframe[0].value
    assert speed.loc["bob", "median_seconds"] == 4.0 and speed.loc["alice", "labels"] == 3


def test_runs_page_without_progress_or_labels(tmp_path):
    run = tmp_path / "run"
    demo.make_run(run, pairs=1, length=4, side=16, progress_rows=0)
    at = AppTest.from_file(RUNS_PAGE, default_timeout=30)
    at.session_state[shared.RUN_KEY] = str(run)
    at.run()
    assert not at.exception
    assert "no progress.csv rows yet" in _texts(at.info) and "no labels yet" in _texts(at.info)


def _rec(pair_id: int, answer: str, labeler: str, created: float = 0.0) -> LabelRecord:
    return LabelRecord(0, pair_id, "a", "b", Answer(answer), labeler, 1.0, created, 0, "random")


def test_agreement_and_rates():
    recs = [_rec(1, "left", "a"), _rec(1, "left", "b"), _rec(1, "right", "c"), _rec(2, "equal", "a"),
            _rec(2, "equal", "b"), _rec(3, "left", "a")]
    agree = shared.agreement(recs)
    assert agree.repeated_pairs == 2 and agree.all_agree == 0.5 and agree.pairwise == pytest.approx(2 / 4)
    assert shared.agreement(recs[-1:]).repeated_pairs == 0
    now = 10_000.0
    mine = [_rec(i, "left", "a", now - 30 * i) for i in range(1, 11)] + [_rec(99, "left", "a", now - 3600)]
    assert shared.labels_per_minute(mine, "a", now=now) == pytest.approx(10 / 5)  # 10 labels over 5 minutes
    assert shared.labels_per_minute(mine, "nobody", now=now) == 0.0
    assert [shared.valid_labeler(n) for n in ("a", "A_b.c-9", "", "a b", "x" * 41)] == [True, True, False, False,
                                                                                         False]


# --- the app never imports torch -------------------------------------------------------------

def test_app_never_imports_torch(template):
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
sys.path.insert(0, {str(APP)!r})
import shared
for page in ({LABEL_PAGE!r}, {RUNS_PAGE!r}):
    at = AppTest.from_file(page, default_timeout=60)
    at.session_state["run_dir"] = {str(template)!r}
    at.session_state["labeler"] = "alice"
    at.run()
    assert not at.exception, at.exception
heavy = [m for m in ("torch", "stable_baselines3", "prefrl.clips", "prefrl.loop", "gymnasium") if m in sys.modules]
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout


# --- security defaults: the access token, paths that stay in the run folder ---------------------------------

@pytest.fixture
def exposed(monkeypatch):
    """The server as if bound to every interface (Streamlit's own default without --server.address)."""
    import streamlit.config as st_config

    old = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    monkeypatch.delenv(shared.TOKEN_ENV, raising=False)
    yield monkeypatch
    st_config.set_option("server.address", old)


def test_exposed_without_a_token_shows_nothing(run, exposed):
    for page in (LABEL_PAGE, RUNS_PAGE):
        at = AppTest.from_file(page, default_timeout=30)
        at.session_state[shared.RUN_KEY] = str(run)
        at.session_state["labeler"] = "alice"
        at.run()
        assert not at.exception
        assert "without an access token" in _texts(at.error), page
        assert not [b for b in at.button if b.key == "ans_left"] and not at.metric


def test_exposed_with_a_token_needs_it_once_per_session(run, exposed):
    exposed.setenv(shared.TOKEN_ENV, "tok_0123456789abcdef")
    for given in (None, "wrong", "tok_0123456789abcdeF"):
        at = AppTest.from_file(LABEL_PAGE, default_timeout=30)
        at.session_state[shared.RUN_KEY] = str(run)
        at.session_state["labeler"] = "alice"
        if given is not None:
            at.query_params["token"] = given
        at.run()
        assert "needs its access token" in _texts(at.error), given
        assert not [b for b in at.button if b.key == "ans_left"]
    at = AppTest.from_file(LABEL_PAGE, default_timeout=30)
    at.session_state[shared.RUN_KEY] = str(run)
    at.session_state["labeler"] = "alice"
    at.query_params["token"] = "tok_0123456789abcdef"
    at.run()
    assert not at.error and _shown(at) == 1
    del at.query_params["token"]  # the session remembers it (e.g. after moving to another page)
    at.button(key="ans_left").click().run()
    assert [r.pair_id for r in _labels(run)] == [1]
    assert "only browsers with the access token" in _texts(at.sidebar.caption)


def test_a_token_is_required_on_localhost_too_when_set(run, monkeypatch):
    monkeypatch.setenv(shared.TOKEN_ENV, "tok_0123456789abcdef")
    at = _label_app(run)
    assert "needs its access token" in _texts(at.error)


def test_clip_paths_cannot_leave_the_run_folder(run, tmp_path):
    secret = tmp_path / "secret.mp4"
    shutil.copy(run / "clips" / "c001.mp4", secret)
    (run / "clips" / "c001.mp4").unlink()
    (run / "clips" / "c001.mp4").symlink_to(secret)  # pair 1's right clip, pair 2's left clip
    con = sqlite3.connect(run / "labels.sqlite")
    con.execute("UPDATE clips SET video = '../../secret.mp4' WHERE id = 'c000'")
    con.commit()
    con.close()
    at = _label_app(run)
    assert not at.exception
    text = _texts(at.error) + _texts(at.warning)
    assert "points outside its run folder" in text and "points outside the run folder" in text
    assert at.button(key="ans_left").disabled  # nothing from outside is shown; the pair can be skipped
    with pytest.raises(StoreError, match="outside"):
        shared.video_path(run, "../x.mp4")


def test_save_answer_retries_a_busy_store_and_never_says_locked(run, monkeypatch):
    """A writer that holds the lock for a moment: the answer waits for it instead of failing."""
    import threading

    other = sqlite3.connect(run / "labels.sqlite", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(1.0, lambda: other.execute("ROLLBACK")).start()
    t = time.monotonic()
    kind, text = shared.save_answer(run, "alice", 1, "left", 1.0)
    assert (kind, time.monotonic() - t >= 0.9) == ("ok", True), text
    other.close()
    assert shared.save_answer(run, "alice", 1, "right", 1.0) == ("warning", "pair 1 was already answered; moving on")
    assert shared.save_answer(run, "no one", 1, "right", 1.0)[0] == "error"
    assert [(r.pair_id, r.answer) for r in _labels(run)] == [(1, Answer.LEFT)]


def test_a_clip_file_vanishing_while_the_page_renders(run, monkeypatch):
    """The trainer (or a person) deletes a video between the page's check and Streamlit's read of it."""
    import streamlit

    real_video = streamlit.video

    def vanishing_video(data, *args, **kwargs):
        if str(data).endswith("c000.mp4"):
            Path(data).unlink(missing_ok=True)  # gone just before Streamlit opens it
        return real_video(data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "video", vanishing_video)
    at = _label_app(run)
    assert not at.exception
    assert "c000.mp4 is missing" in _texts(at.error)
    at.button(key="skip").click().run()
    assert _shown(at) == 2 and not at.exception
