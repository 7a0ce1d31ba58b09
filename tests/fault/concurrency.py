"""Everything on one run folder at once: the trainer, two labelers in the app, and `prefrl plot`.

- the trainer: `prefrl train --labeler human --oracle-fill` (it writes clips, MP4s and pairs, reads labels,
  and its oracle answers what the people leave pending: a third writer of labels);
- two labelers, `alice` and `bob`, as threads of this process writing through app/shared.py's
  `save_answer` (the function the label page's buttons call), with `alice` in two tabs at once so the
  same person races herself; each action opens its own short-lived store, as a Streamlit script run does;
- the app's pages rendered by streamlit's AppTest (reads: the pending queue, metrics, curves);
- `prefrl plot RUN_DIR` in a loop (reads progress.csv, config.json, summary.json).

Counted: answers saved, "already answered" notices, errors shown (and whether any says "locked" or
"busy"), answer latency, plot and page runs, and, at the end, duplicate labels and SQLite's integrity check.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
TRAIN_FLAGS = ["--env", "Pendulum-v1", "--labeler", "human", "--oracle-fill", "--total-labels", "200",
               "--total-timesteps", "40000", "--n-steps", "256", "--n-envs", "2", "--clip-length", "20",
               "--epochs", "3", "--pretrain-epochs", "5", "--refit-growth", "0", "--checkpoint-every", "1",
               "--max-pending", "30", "--eval-episodes", "0", "--no-progress-bar"]
"""Short rollouts (512 steps, so a 200-step Pendulum episode ends in each) bring pairs, refits and checkpoints often;
a 40k-step budget makes the label schedule ask most of its 200 pairs within a few minutes."""


@dataclass
class Figures:
    seconds: float = 0.0
    answers_saved: int = 0
    already_answered: int = 0
    """Notices "pair N was already answered; moving on" (the same person in two tabs): expected, not errors."""
    errors_shown: list[str] = field(default_factory=list)
    locked_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    reads: int = 0
    plot_runs: int = 0
    plot_failures: list[str] = field(default_factory=list)
    page_runs: int = 0
    page_problems: list[str] = field(default_factory=list)
    trainer_exit: int | None = None
    trainer_rollouts: int = 0
    labels_total: int = 0
    labels_by: dict[str, int] = field(default_factory=dict)
    duplicate_labels: int = 0
    integrity: str = ""

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies) or [float("nan")]
        return {
            "seconds": round(self.seconds, 1), "trainer rollouts": self.trainer_rollouts,
            "trainer exit": self.trainer_exit, "labels in the store": self.labels_total,
            "labels by labeler": self.labels_by, "answers saved by the two people": self.answers_saved,
            "'already answered' notices (same person, two tabs)": self.already_answered,
            "errors shown to a labeler": len(self.errors_shown),
            "'database is locked' / busy errors shown": self.locked_errors,
            "answer latency p50 / p99 / max (ms)": (round(1000 * statistics.median(lat), 1),
                                                     round(1000 * lat[int(0.99 * (len(lat) - 1))], 1),
                                                     round(1000 * lat[-1], 1)),
            "store reads by the labelers": self.reads, "app page renders (AppTest)": self.page_runs,
            "app page problems": len(self.page_problems), "prefrl plot runs": self.plot_runs,
            "prefrl plot failures": len(self.plot_failures), "duplicate labels": self.duplicate_labels,
            "integrity_check": self.integrity,
        }


def _labeler(run: Path, name: str, stop: threading.Event, figs: Figures, lock: threading.Lock, seed: int) -> None:
    """One browser tab of one person: look at the queue, think a little, answer (as the label page does)."""
    sys.path.insert(0, str(APP))
    import shared

    from prefrl.labels.store import LabelStore, StoreError

    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with LabelStore(run / shared.DB_NAME, timeout=5.0) as store:
                pending = store.pending_pairs(name, limit=3)
                store.labels(last=50)  # the page's metrics read the recent labels
        except StoreError as exc:
            with lock:
                figs.errors_shown.append(str(exc))
                figs.locked_errors += "locked" in str(exc) or "busy" in str(exc)
            continue
        with lock:
            figs.reads += 1
        if not pending:
            time.sleep(0.2)
            continue
        time.sleep(rng.uniform(0.02, 0.25))  # a quick person
        pair = pending[0] if rng.random() < 0.7 else rng.choice(pending)
        t = time.perf_counter()
        kind, text = shared.save_answer(run, name, pair.id, rng.choice(["left", "right", "equal", "cant_tell"]),
                                        seconds=rng.uniform(0.5, 3.0))
        dt = time.perf_counter() - t
        with lock:
            figs.latencies.append(dt)
            if kind == "ok":
                figs.answers_saved += 1
            elif kind == "warning":
                figs.already_answered += 1
            else:
                figs.errors_shown.append(text)
                figs.locked_errors += "locked" in text or "busy" in text


def _plotter(run: Path, out: Path, stop: threading.Event, figs: Figures, lock: threading.Lock) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    while not stop.is_set():
        if not (run / "progress.csv").exists():
            time.sleep(0.5)
            continue
        r = subprocess.run([sys.executable, "-m", "prefrl", "plot", str(run), "--out", str(out)],
                           capture_output=True, text=True, env=env, timeout=120)
        with lock:
            figs.plot_runs += 1
            if r.returncode != 0:
                figs.plot_failures.append(r.stderr.strip()[-300:])
        time.sleep(1.0)


def _render_pages(run: Path, figs: Figures) -> None:
    """Both pages once, as a browser visit would run them (in this, the main, thread)."""
    from streamlit.testing.v1 import AppTest

    for page in (APP / "Label.py", APP / "pages" / "1_Runs.py"):
        at = AppTest.from_file(str(page), default_timeout=60)
        at.session_state["run_dir"] = str(run)
        at.session_state["labeler"] = "carol"
        at.run()
        figs.page_runs += 1
        problems = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
        figs.page_problems += problems
        figs.locked_errors += sum("locked" in p or "busy" in p for p in problems)


def _has_pairs(run: Path) -> bool:
    if not (run / "labels.sqlite").exists():
        return False
    con = sqlite3.connect(run / "labels.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] > 0
    except sqlite3.OperationalError:  # the schema is being created
        return False
    finally:
        con.close()


def _rollouts(run: Path) -> int:
    try:
        return max(0, len((run / "progress.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def run_concurrency(run: Path, seconds: float, log: Path, min_rollouts: int = 2, max_seconds: float = 300) -> Figures:
    """Trainer + two labelers (alice in two tabs) + plot + page renders on `run` for `seconds` (counted from
    the first pair; before it the trainer renders and encodes the initial policy's clips), and on a busy machine
    longer, until the trainer has logged `min_rollouts` rollouts (at most `max_seconds`)."""
    figs = Figures()
    lock, stop = threading.Lock(), threading.Event()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PREFRL_FAULT", None)
    with open(log, "w") as fh:
        trainer = subprocess.Popen([sys.executable, "-m", "prefrl", "train", "--run-dir", str(run), *TRAIN_FLAGS],
                                   stdout=fh, stderr=subprocess.STDOUT, env=env)
    t0 = time.monotonic()
    try:
        while not _has_pairs(run) and trainer.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.5)  # the initial policy's clips are rendered and encoded first
        t0 = time.monotonic()
        threads = [threading.Thread(target=_labeler, args=(run, name, stop, figs, lock, i), daemon=True)
                   for i, name in enumerate(["alice", "alice", "bob"])]
        threads.append(threading.Thread(target=_plotter, args=(run, run.parent / "plots", stop, figs, lock),
                                        daemon=True))
        for t in threads:
            t.start()
        deadline, hard = time.monotonic() + seconds, time.monotonic() + max_seconds
        while (time.monotonic() < deadline or _rollouts(run) < min_rollouts) and time.monotonic() < hard \
                and trainer.poll() is None:
            _render_pages(run, figs)
            time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        if trainer.poll() is None:
            trainer.send_signal(signal.SIGINT)  # as Ctrl+C would: the trainer stops between writes
            try:
                trainer.wait(60)
            except subprocess.TimeoutExpired:
                trainer.kill()
                trainer.wait()
    figs.trainer_exit = trainer.returncode
    figs.seconds = time.monotonic() - t0
    con = sqlite3.connect(run / "labels.sqlite")
    try:
        figs.integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        figs.duplicate_labels = con.execute("SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM labels "
                                            "GROUP BY pair_id, labeler)").fetchone()[0]
        figs.labels_by = dict(con.execute("SELECT labeler, COUNT(*) FROM labels GROUP BY labeler").fetchall())
        figs.labels_total = sum(figs.labels_by.values())
    finally:
        con.close()
    figs.trainer_rollouts = _rollouts(run)
    return figs
