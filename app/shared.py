"""What both pages of the labeling app share: which run, its store, its progress.csv, and small statistics.

The app and the trainer share nothing but the run folder (see ../shared/DESIGN.md), so this module
imports only the standard library, numpy-free helpers, streamlit and ``prefrl.labels.store`` (no torch,
no stable_baselines3, no ``prefrl.clips``). A LabelStore is opened per script run (or per callback) and
closed at its end: connections are short-lived, as the store asks.
"""

from __future__ import annotations

import argparse
import csv
import hmac
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

import streamlit as st

from prefrl.labels.store import Answer, DuplicateLabel, LabelRecord, LabelStore, StoreBusy, StoreError, run_file

DB_NAME = "labels.sqlite"
LABELER_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
ANSWER_TEXT = {Answer.LEFT: "left is better", Answer.RIGHT: "right is better", Answer.EQUAL: "equal",
               Answer.CANT_TELL: "can't tell"}
RUN_KEY = "run_dir"
"""Session-state key of the chosen run folder (a str); tests set it directly."""
TOKEN_ENV = "PREFRL_APP_TOKEN"
"""Environment variable with the shared access token (`prefrl app` sets it; never on the command line, where
other users of the machine could read it)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# --- which run --------------------------------------------------------------------------

class AppArgs(NamedTuple):
    run: Optional[Path]
    results: Path


def parse_args(argv: Optional[Sequence[str]] = None) -> AppArgs:
    """`streamlit run app/Label.py -- --run RUN_DIR --results DIR`; unknown arguments are ignored."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--run", type=Path, default=None)
    p.add_argument("--results", type=Path, default=Path("results"))
    try:
        args, _ = p.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit:  # e.g. `--run` without a value; fall back to the defaults
        return AppArgs(None, Path("results"))
    return AppArgs(args.run, args.results)


def find_runs(results: Path) -> list[Path]:
    """Run folders (with a labels.sqlite) up to two levels under `results`, newest first.

    Newest means the latest config.json (written once, when the run starts), else labels.sqlite.
    """
    if not results.is_dir():
        return []
    found = {db.parent for pattern in (f"*/{DB_NAME}", f"*/*/{DB_NAME}") for db in results.glob(pattern)}

    def started(run: Path) -> float:
        for name in ("config.json", DB_NAME):
            try:
                return (run / name).stat().st_mtime
            except OSError:
                continue
        return 0.0

    return sorted(found, key=lambda r: (started(r), r.name), reverse=True)


def choose_run() -> Optional[Path]:
    """Sidebar run chooser; the choice lives in session state (key RUN_KEY) so it survives page switches."""
    args = parse_args()
    runs = find_runs(args.results)
    current = st.session_state.get(RUN_KEY)
    if current is None:
        default = args.run if args.run is not None else (runs[0] if runs else None)
        current = None if default is None else str(default)
        st.session_state[RUN_KEY] = current
    options = [str(r) for r in runs]
    if current is not None and current not in options:
        options.insert(0, current)
    if not options:
        st.sidebar.info(f"no run folder with a {DB_NAME} under {args.results}/")
        st.info(f"No run yet: no folder under `{args.results}/` has a {DB_NAME}. Start one with "
                "`prefrl train ...`, or pass `-- --run RUN_DIR` (or `--results DIR`) to `streamlit run`.")
        return None

    def _chosen() -> None:
        st.session_state[RUN_KEY] = st.session_state["_run_choice"]

    st.session_state["_run_choice"] = current
    st.sidebar.selectbox("Run", options, key="_run_choice", on_change=_chosen,
                         format_func=lambda s: Path(s).name or s, help="newest first; the folder of one run")
    st.sidebar.caption(f"`{current}`")
    return Path(current)


def guard() -> None:
    """Stop the page (st.stop) unless this browser may use it.

    Listening on 127.0.0.1 (the default of `prefrl app`), anyone on this machine may. Listening anywhere else
    (or on every interface, Streamlit's own default), only a browser that brought the shared access token in
    its URL (`?token=...`, printed by `prefrl app --address ...`); with no token configured the app refuses
    to show anything. The token is checked once per browser session and kept in session state.
    """
    address = st.get_option("server.address")
    token = os.environ.get(TOKEN_ENV, "")
    exposed = address not in LOOPBACK
    if not token:
        if exposed:
            st.error(f"This app listens on {address or 'all interfaces'} without an access token, so it shows "
                     "nothing. Start it with `prefrl app RUN_DIR` (this machine only) or `prefrl app RUN_DIR "
                     "--address ADDRESS`, which prints a URL with a token.")
            st.stop()
        return
    if not st.session_state.get("_token_ok"):
        given = st.query_params.get("token", "")
        if not (given and hmac.compare_digest(given.encode(), token.encode())):
            st.error("This app needs its access token: open the URL that `prefrl app` printed "
                     "(it ends in `?token=...`), or ask whoever started it.")
            st.stop()
        st.session_state["_token_ok"] = True
    if exposed:
        st.sidebar.caption(f"Listening on {address or 'all interfaces'}; only browsers with the access token "
                           "can label.")



def video_path(run: Path, rel: str) -> Path:
    """A clip's video as stored in labels.sqlite, refused (StoreError) when it leads outside the run folder:
    the app serves this file to the browser, and a label DB may have been handed over."""
    return run_file(run, rel)


def save_answer(run: Path, labeler: str, pair_id: int, answer: str, seconds: float,
                attempts: int = 3) -> tuple[str, str]:
    """Write one answer as the label page does; returns (kind, message) for the page: kind is "ok", "warning"
    (already answered, e.g. a second tab) or "error". A busy store is retried (each try waits up to 5 s for
    the lock), so "database is locked" never reaches the labeler; nothing is ever overwritten."""
    if not valid_labeler(labeler):
        return "error", f"'{labeler}' is not a usable labeler name; change it in the sidebar"
    for attempt in range(attempts):
        try:
            with LabelStore(Path(run) / DB_NAME, timeout=5.0) as store:
                pair = store.get_pair(pair_id)
                version = max(pair.model_version, int(store.get_meta(MODEL_VERSION_KEY, "0") or 0))
                store.add_label(pair_id, answer, labeler, seconds, version)
            return "ok", f"pair {pair_id}: {answer}"
        except DuplicateLabel:
            return "warning", f"pair {pair_id} was already answered; moving on"
        except StoreBusy:
            if attempt == attempts - 1:
                return "error", (f"the label store stayed busy for {5 * attempts} s (the trainer is writing); "
                                 f"your answer to pair {pair_id} was not saved, press it again")
        except StoreError as exc:
            return "error", str(exc)
    raise AssertionError("unreachable")


def open_store(run: Path) -> Optional[LabelStore]:
    """The run's store, or None after showing why not (one line, no traceback)."""
    db = run / DB_NAME
    if not db.is_file():
        st.error(f"{db} does not exist; choose a run folder that the trainer has started.")
        return None
    try:
        return LabelStore(db, timeout=5.0)
    except StoreError as exc:
        st.error(str(exc))
        return None


# --- progress.csv ------------------------------------------------------------------------

def read_progress(run: Path) -> list[dict[str, float]]:
    """Rows of progress.csv as floats (empty cells as NaN); [] when the file is missing or empty."""
    path = run / "progress.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    out = []
    for r in rows:
        row = {}
        for k, v in r.items():
            if k is None:
                continue
            try:
                row[k] = float(v) if v not in (None, "") else float("nan")
            except ValueError:
                row[k] = float("nan")
        out.append(row)
    return out


MODEL_VERSION_KEY = "reward_model_version"
"""Meta key in labels.sqlite where the trainer records the reward model's current version at each refit."""


# --- small statistics (pure; tested without streamlit) -------------------------------------

def valid_labeler(name: str) -> bool:
    return LABELER_RE.fullmatch(name) is not None


def labels_per_minute(records: Sequence[LabelRecord], labeler: str, now: Optional[float] = None,
                      window: float = 600.0) -> float:
    """The labeler's labels per minute over the last `window` seconds (or since their first label in it)."""
    now = time.time() if now is None else now
    times = [r.created for r in records if r.labeler == labeler and now - r.created <= window]
    if not times:
        return 0.0
    span = max(60.0, now - min(times))  # at least a minute, so one quick label is not "60/min"
    return len(times) / (min(span, window) / 60.0)


class Agreement(NamedTuple):
    repeated_pairs: int
    """Pairs answered by two or more labelers."""
    all_agree: float
    """Share of those pairs where every labeler gave the same answer (NaN when none)."""
    pairwise: float
    """Share of agreeing answers over all labeler-labeler combinations on those pairs (NaN when none)."""


def agreement(records: Sequence[LabelRecord]) -> Agreement:
    by_pair: dict[int, list[Answer]] = defaultdict(list)
    for r in records:
        by_pair[r.pair_id].append(r.answer)
    repeated = [a for a in by_pair.values() if len(a) >= 2]
    if not repeated:
        return Agreement(0, float("nan"), float("nan"))
    same = sum(len(set(a)) == 1 for a in repeated)
    agree = total = 0
    for answers in repeated:
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                total += 1
                agree += answers[i] == answers[j]
    return Agreement(len(repeated), same / len(repeated), agree / total)


class Speed(NamedTuple):
    labeler: str
    labels: int
    median_seconds: float
    mean_seconds: float


def speed_by_labeler(records: Sequence[LabelRecord]) -> list[Speed]:
    by: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by[r.labeler].append(r.seconds)
    return [Speed(name, len(s), statistics.median(s), statistics.fmean(s)) for name, s in sorted(by.items())]
